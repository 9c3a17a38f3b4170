#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod config;
pub mod policy;
pub mod state;
