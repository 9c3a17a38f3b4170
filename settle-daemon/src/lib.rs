#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod config;
pub mod feed_client;
pub mod policy;
pub mod state;
