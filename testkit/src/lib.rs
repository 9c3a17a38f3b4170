#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod binaries;
pub mod flaky_proxy;
pub mod seeds;

pub use binaries::{profile_dir, workspace_binary};
pub use flaky_proxy::{Fault, FlakyProxy};
