//! latent-refl
