//! Operations with their own kernels and backward passes: attention, activations, the rotary embedding, the adaLN modulation, linear layers and the fused AdamW step.

pub mod activation;
pub mod attention;
pub(crate) mod cpu_math;
pub(crate) mod dispatch;
pub(crate) mod flex_node;
pub mod fused_adamw;
pub mod linear;
pub mod lora;
pub mod modulation;
pub mod rotary;
