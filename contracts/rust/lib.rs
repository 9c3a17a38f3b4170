#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod bindings;
mod deploy;
mod error;
mod settle_item;
mod tools;

pub use bindings::{
    FeeOnTransferToken, ISluiceEscrow, NoBoolToken, ReentrantToken, SluiceEscrow, TestToken,
};
pub use deploy::{
    DEFAULT_CLOSE_GRACE_PERIOD, DEFAULT_NAME, DEFAULT_VERSION, EscrowConfig, deploy_escrow,
    deploy_test_token,
};
pub use error::ContractsError;
pub use settle_item::{SignatureFault, compact_signature, settle_item, settle_item_from_opened};
pub use tools::anvil_binary;
