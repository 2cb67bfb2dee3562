//! The user guide (`docs/guide/`); its code compiles as part of the tests. The method pages are
//! the docs of [`crate::prfl`], [`crate::velr`], [`crate::grpo`], [`crate::rgb_refl`] and
//! [`crate::sft`].

#[doc = include_str!("../docs/guide/getting_started.md")]
pub mod getting_started {}

#[doc = include_str!("../docs/guide/concepts.md")]
pub mod concepts {}

#[doc = include_str!("../docs/guide/own_model_and_reward.md")]
pub mod own_model_and_reward {}

#[doc = include_str!("../docs/guide/configuration.md")]
pub mod configuration {}

#[doc = include_str!("../docs/guide/wan.md")]
pub mod wan {}

#[doc = include_str!("../docs/guide/memory.md")]
pub mod memory {}

#[doc = include_str!("../docs/guide/backends.md")]
pub mod backends {}
