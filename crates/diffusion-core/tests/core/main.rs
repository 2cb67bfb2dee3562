//! Integration tests of diffusion-core, in one binary (each test binary links
//! burn once more); `grad_window.rs` is apart because its heap probe counts the whole process.

mod checkpoint;
mod common;
mod folders;
mod lora;
mod parity;
mod precision;
mod properties;
mod wan_vae;
