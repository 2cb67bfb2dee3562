//! Run-time choice of a kernel by backend type.
//!
//! burn 0.21 lets a crate add an operation with its own backward only for a concrete backend
//! (`Autodiff<I>` for a named `I`, through `burn_autodiff::ops::Backward`), and generic model
//! code can only reach it through a backend-extension trait bound carried by every model type.
//! The fused operations of this crate ([`crate::ops::attention`], [`crate::ops::activation`],
//! [`crate::ops::rotary`], [`crate::ops::modulation`], [`crate::ops::fused_adamw`]) instead compare the generic
//! backend's `TypeId` with the built-in backends and move their tensors into the concrete type
//! when it matches; every other backend takes burn's own operation.

use core::any::{Any, TypeId};

/// Whether `A` and `T` are the same type.
pub(crate) fn is<A: 'static, T: 'static>() -> bool {
    TypeId::of::<A>() == TypeId::of::<T>()
}

/// Moves a value into the type it is known to have (checked with [`is`] by the caller).
pub(crate) fn cast<A: 'static, T: 'static>(a: A) -> T {
    *(Box::new(a) as Box<dyn Any>)
        .downcast::<T>()
        .expect("the caller compared the TypeIds")
}
