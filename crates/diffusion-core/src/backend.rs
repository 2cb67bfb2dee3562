//! Backend selection for binaries, tests and benches. Library code never names a backend; it is
//! generic over `Backend` / `AutodiffBackend`. Cargo features pick what [`DefaultBackend`] is:
//! `cuda` over `wgpu` over the CPU backend `flex` (burn's fast pure-Rust CPU backend, with SIMD
//! and rayon). `ndarray` only adds [`NdArray`] for comparison benchmarks.

use burn::backend::Autodiff;

/// burn's pure-Rust CPU backend (burn-flex with SIMD and rayon).
pub type Flex = burn_flex::Flex;

/// burn's ndarray CPU backend (deprecated upstream; kept for comparison).
#[cfg(feature = "ndarray")]
pub type NdArray = burn::backend::NdArray;

/// WebGPU backend (Vulkan / Metal / DX12; Mesa's lavapipe on CPU-only Linux).
#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::Wgpu;

/// CUDA backend (with kernel fusion and autotuning).
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;

/// The backend selected by cargo features.
#[cfg(feature = "cuda")]
pub type DefaultBackend = Cuda;
/// The backend selected by cargo features.
#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
pub type DefaultBackend = Wgpu;
/// The backend selected by cargo features.
#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
pub type DefaultBackend = Flex;

/// [`DefaultBackend`] with autodiff, for training.
pub type DefaultAutodiff = Autodiff<DefaultBackend>;

/// Human-readable name of [`DefaultBackend`].
pub const DEFAULT_BACKEND_NAME: &str = if cfg!(feature = "cuda") {
    "cuda"
} else if cfg!(feature = "wgpu") {
    "wgpu"
} else {
    "flex (cpu)"
};
