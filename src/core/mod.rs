//! The core: the domain, the rotation protocol and enrollment. It knows
//! nothing of HTTP, Lambda or the AWS SDK: it talks to the world through the
//! ports.

pub mod accounts;
pub mod admin;
pub mod domain;
pub mod duration;
pub mod enrollment;
pub mod fanout;
#[cfg(any(test, feature = "test-util"))]
pub mod memory;
pub mod policy;
pub mod ports;
pub mod retirement;
pub mod rotation;
pub mod sweep;
pub mod update;
