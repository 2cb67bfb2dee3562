use burn::tensor::{backend::Backend, Tensor};

/// Layer norm over the last axis without affine parameters (`FP32LayerNorm(elementwise_affine=False)`).
///
/// # Shapes
/// - `x`: `[B, L, D]` -> `[B, L, D]`
pub(crate) fn layer_norm<B: Backend>(x: Tensor<B, 3>, eps: f64) -> Tensor<B, 3> {
    let (var, mean) = x.clone().var_mean_bias(2);
    (x - mean).div(var.add_scalar(eps).sqrt())
}

/// `norm(x) * (1 + scale) + shift`, the adaLN modulation of DiT blocks.
///
/// # Shapes
/// - `x`: `[B, L, D]`; `shift`, `scale`: `[B, 1, D]`
pub(crate) fn modulate<B: Backend>(
    x: Tensor<B, 3>,
    shift: Tensor<B, 3>,
    scale: Tensor<B, 3>,
    eps: f64,
) -> Tensor<B, 3> {
    layer_norm(x, eps) * scale.add_scalar(1.0) + shift
}
