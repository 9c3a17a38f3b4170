#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod chain;
pub mod feed;
pub mod protocol;
pub mod session;
pub mod store;
