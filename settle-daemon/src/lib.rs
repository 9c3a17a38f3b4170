#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod chain;
pub mod config;
pub mod feed_client;
pub mod metrics;
pub mod policy;
pub mod runner;
pub mod source;
pub mod state;
pub mod tx;
