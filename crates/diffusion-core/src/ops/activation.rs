//! GELU with the tanh approximation (diffusers' `GELU(approximate="tanh")`, the Wan feed-forward
//! and text projection), with a CPU kernel.
//!
//! `gelu(x) = x / 2 (1 + tanh u) = x σ(2u)` with `u = √(2/π) (x + 0.044715 x³)`. burn's
//! `gelu_approximate` evaluates `tanh` with the C library one element at a time and records
//! several autodiff operations, each keeping a tensor for the backward. On the CPU backend (f32)
//! [`gelu_tanh`] uses the vectorised `exp` of `cpu_math` on both cores, as one autodiff node that
//! keeps only its input; its derivative is `σ + x σ (1 - σ) 2√(2/π) (1 + 3 · 0.044715 x²)` with
//! `σ = σ(2u)`. Other backends take burn's `gelu_approximate` ([`crate::ops::dispatch`]).

use burn::{
    backend::Autodiff,
    tensor::{
        activation::gelu_approximate, backend::Backend, DType, Tensor, TensorData, TensorMetadata,
    },
};
use burn_autodiff::{
    checkpoint::base::Checkpointer,
    grads::Gradients,
    ops::{Backward, Ops},
};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::{
    backend::Flex,
    ops::cpu_math::{exp, values},
    ops::dispatch::{cast, is},
    ops::flex_node::{contiguous, output_grad, record, register, split, tensor},
};

/// GELU with the tanh approximation, equal to burn's `gelu_approximate` in value and gradient
/// (tested); the CPU kernel on the CPU backend (module docs).
///
/// # Shapes
/// - `x`: any -> the same
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if x.dtype() == DType::F32 {
        if is::<B, Autodiff<Flex>>() {
            return cast(autodiff_gelu::<D>(cast(x)));
        }
        if is::<B, Flex>() {
            let y = forward(&contiguous::<D>(cast(x)));
            return cast(tensor::<D>(y));
        }
    }
    gelu_approximate(x)
}

/// The derivative of [`gelu_tanh`] at `x` (module docs), from tensor operations on any backend.
///
/// # Shapes
/// - `x`: any -> the same
pub fn gelu_tanh_derivative<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let x2 = x.clone().square();
    let u = (x.clone() + x.clone() * x2.clone().mul_scalar(0.044715)).mul_scalar(c);
    let sig = burn::tensor::activation::sigmoid(u.mul_scalar(2.0));
    let slope = x2
        .mul_scalar(3.0 * 0.044715)
        .add_scalar(1.0)
        .mul_scalar(2.0 * c);
    sig.clone() + x * sig.clone() * (sig.neg().add_scalar(1.0)) * slope
}

const C: f32 = 0.797_884_6; // √(2/π)
const A: f32 = 0.044_715;
/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// `σ(2u)`.
#[inline(always)]
fn sigma(x: f32) -> f32 {
    1.0 / (1.0 + exp(-2.0 * C * (x + A * x * x * x)))
}

/// GELU of a contiguous tensor.
fn forward(x: &FlexTensor) -> FlexTensor {
    let mut out = vec![0.0f32; x.shape().num_elements()];
    out.par_chunks_mut(CHUNK)
        .zip(values(x).par_chunks(CHUNK))
        .for_each(|(out, x)| {
            for (o, &x) in out.iter_mut().zip(x) {
                *o = x * sigma(x);
            }
        });
    FlexTensor::from_data(TensorData::new(out, x.shape()))
}

/// The input gradient from the input `x` and the output gradient `grad` (contiguous, same
/// shapes).
fn backward(x: &FlexTensor, grad: &FlexTensor) -> FlexTensor {
    let mut out = vec![0.0f32; x.shape().num_elements()];
    out.par_chunks_mut(CHUNK)
        .zip(values(x).par_chunks(CHUNK))
        .zip(values(grad).par_chunks(CHUNK))
        .for_each(|((out, x), g)| {
            for ((o, &x), &g) in out.iter_mut().zip(x).zip(g) {
                let s = sigma(x);
                *o = g * (s + x * s * (1.0 - s) * 2.0 * C * (1.0 + 3.0 * A * x * x));
            }
        });
    FlexTensor::from_data(TensorData::new(out, x.shape()))
}

fn autodiff_gelu<const D: usize>(x: Tensor<Autodiff<Flex>, D>) -> Tensor<Autodiff<Flex>, D> {
    let (x, input) = split(x);
    let out = forward(&input);
    record(GeluBackward, [x], out, || input)
}

#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    /// The contiguous input.
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = output_grad(&ops, grads);
        let by_input = [backward(&ops.state, &grad)];
        register(&ops, grads, by_input);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::DefaultBackend;
    use burn::tensor::Tolerance;

    type AD = Autodiff<DefaultBackend>;

    /// Value and input gradient equal burn's `gelu_approximate` over [-12, 12] (both tails),
    /// with and without autodiff; the value at 0 is 0 and the slope there 1/2 by hand.
    #[test]
    fn equals_burns_gelu_approximate() {
        let values: Vec<f32> = (0..=2400).map(|i| -12.0 + i as f32 * 0.01).collect();
        let n = values.len();
        let x = Tensor::<AD, 2>::from_data(TensorData::new(values, [1, n]), &Default::default());
        let run = |f: fn(Tensor<AD, 2>) -> Tensor<AD, 2>| {
            let x = x.clone().require_grad();
            let y = f(x.clone());
            let grads = (y.clone() * y.clone()).sum().backward();
            [y.inner(), x.grad(&grads).unwrap()]
        };
        let [want_y, want_g] = run(gelu_approximate);
        let [y, g] = run(gelu_tanh);
        y.into_data()
            .assert_approx_eq::<f32>(&want_y.to_data(), Tolerance::absolute(1e-5));
        g.into_data()
            .assert_approx_eq::<f32>(&want_g.into_data(), Tolerance::absolute(1e-4));
        gelu_tanh(x.inner())
            .into_data()
            .assert_approx_eq::<f32>(&want_y.into_data(), Tolerance::absolute(1e-5));
        let zero = Tensor::<AD, 1>::zeros([1], &Default::default()).require_grad();
        let grads = gelu_tanh(zero.clone()).sum().backward();
        assert_eq!(gelu_tanh(zero.clone()).into_scalar(), 0.0);
        assert!((zero.grad(&grads).unwrap().into_scalar() - 0.5).abs() < 1e-7);
    }
}
