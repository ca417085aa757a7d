//! Integration tests, in one binary so the backends are compiled once.

mod common;
mod full_size;
mod unet_naming;
mod unet_parity;
mod weights_errors;
