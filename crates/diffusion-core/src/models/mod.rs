//! The models: the velocity-model trait, the Wan2.1 video transformer, video autoencoders, text encoders and prompt enhancers.

pub(crate) mod diffusers_config;
pub mod model;
pub mod prompt;
pub mod text;
pub mod vae;
pub mod wan;
pub mod wan_vae;
