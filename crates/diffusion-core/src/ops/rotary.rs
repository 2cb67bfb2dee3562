//! Rotary position embedding on interleaved pairs (Wan's `apply_rotary_emb`), with a CPU
//! kernel.
//!
//! Each pair `(x₂ᵢ, x₂ᵢ₊₁)` of a head is rotated by its position's angle. With the tables stored
//! at full head width, `cos = (c, c)` and `sin = (-s, s)` per pair, the rotation is
//! `y = x ∘ cos + swap(x) ∘ sin`, where `swap` exchanges the two elements of every pair. burn
//! evaluates that with a strided pair swap and broadcast products over tables shaped
//! `[1, L, 1, Dh]`, which the CPU backend walks element by element. On the CPU backend (f32)
//! [`rotate`] is one pass over the input (one autodiff node without saved activations: its
//! backward is the inverse rotation of the output gradient, `dx = g ∘ cos + swap(g ∘ sin)`).
//! Other backends take the tensor-operation form ([`crate::ops::dispatch`]).

use burn::{
    backend::Autodiff,
    tensor::{backend::Backend, DType, Tensor, TensorData, TensorMetadata},
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
    ops::cpu_math::values,
    ops::dispatch::{cast, is},
    ops::flex_node::{contiguous, output_grad, record, register, split, tensor},
};

/// Rotates the interleaved pairs of `x` by the tables' angles (module docs). The tables are
/// constants: no gradient flows into them.
///
/// # Shapes
/// - `x`: `[B, L, H, Dh]`; `cos`, `sin`: `[L, Dh]` -> `[B, L, H, Dh]`
pub fn rotate<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 2>, sin: &Tensor<B, 2>) -> Tensor<B, 4> {
    let [_, l, _, d] = x.dims();
    if x.dtype() == DType::F32 && cos.dims() == [l, d] && d % 2 == 0 {
        if is::<B, Autodiff<Flex>>() {
            let table = |t: &Tensor<B, 2>| {
                contiguous(cast::<_, Tensor<Autodiff<Flex>, 2>>(t.clone()).inner())
            };
            let tables = Tables {
                cos: table(cos),
                sin: table(sin),
            };
            return cast(autodiff_rotate(cast(x), tables));
        }
        if is::<B, Flex>() {
            let table = |t: &Tensor<B, 2>| contiguous::<2>(cast(t.clone()));
            let tables = Tables {
                cos: table(cos),
                sin: table(sin),
            };
            let y = tables.rotate::<false>(&contiguous::<4>(cast(x)));
            return cast(tensor::<4>(y));
        }
    }
    rotate_ops(x, cos, sin)
}

/// [`rotate`] with tensor operations, on any backend.
fn rotate_ops<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 2>, sin: &Tensor<B, 2>) -> Tensor<B, 4> {
    let [b, l, h, d] = x.dims();
    let swapped: Tensor<B, 4> = x
        .clone()
        .reshape([b, l, h, d / 2, 2])
        .flip([4])
        .reshape([b, l, h, d]);
    let table = |t: &Tensor<B, 2>| t.clone().reshape([1, l, 1, d]);
    x * table(cos) + swapped * table(sin)
}

/// Contiguous rotation tables `[L, Dh]`.
#[derive(Clone, Debug)]
struct Tables {
    cos: FlexTensor,
    sin: FlexTensor,
}

impl Tables {
    /// The rotation of `x` `[B, L, H, Dh]` (contiguous), or its inverse (the transpose).
    fn rotate<const INVERSE: bool>(&self, x: &FlexTensor) -> FlexTensor {
        let shape = x.shape();
        let (tokens, d) = (shape[1], shape[3]);
        let row = shape[2] * d;
        let (cos, sin) = (values(&self.cos), values(&self.sin));
        // the sine that multiplies the partner of element p, p+1 of a pair
        let (s0, s1) = if INVERSE { (1, 0) } else { (0, 1) };
        let mut out = vec![0.0f32; shape.num_elements()];
        out.par_chunks_mut(row)
            .zip(values(x).par_chunks(row))
            .enumerate()
            .for_each(|(i, (out, x))| {
                let at = (i % tokens) * d;
                let (c, s) = (&cos[at..at + d], &sin[at..at + d]);
                for (out, x) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                    for p in (0..d).step_by(2) {
                        out[p] = x[p] * c[p] + x[p + 1] * s[p + s0];
                        out[p + 1] = x[p + 1] * c[p + 1] + x[p] * s[p + s1];
                    }
                }
            });
        FlexTensor::from_data(TensorData::new(out, shape))
    }
}

fn autodiff_rotate(x: Tensor<Autodiff<Flex>, 4>, tables: Tables) -> Tensor<Autodiff<Flex>, 4> {
    let (x, input) = split(x);
    let out = tables.rotate::<false>(&input);
    record(RotateBackward, [x], out, || tables)
}

#[derive(Debug)]
struct RotateBackward;

impl Backward<Flex, 1> for RotateBackward {
    type State = Tables;

    fn backward(self, ops: Ops<Tables, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = output_grad(&ops, grads);
        let by_input = [ops.state.rotate::<true>(&grad)];
        register(&ops, grads, by_input);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{backend::DefaultBackend, models::wan::RopeTable};
    use burn::tensor::Tolerance;

    type AD = Autodiff<DefaultBackend>;

    /// The kernel equals the tensor-operation form in value and input gradient, with and
    /// without autodiff, on Wan's tables (head width 12: pairs on all three axes).
    #[test]
    fn equals_the_tensor_operations() {
        let dev = Default::default();
        let table = RopeTable::<AD>::new(12, [2, 2, 3], 10_000.0, &dev);
        let n = 2 * 12 * 3 * 12;
        let values: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let x = Tensor::<AD, 4>::from_data(TensorData::new(values, [2, 12, 3, 12]), &dev);
        let w = x.clone().flip([3]).detach();
        let run = |f: fn(Tensor<AD, 4>, &Tensor<AD, 2>, &Tensor<AD, 2>) -> Tensor<AD, 4>| {
            let x = x.clone().require_grad();
            let y = f(x.clone(), &table.cos, &table.sin);
            let grads = (y.clone() * w.clone()).sum().backward();
            [y.inner(), x.grad(&grads).unwrap()]
        };
        let want = run(rotate_ops);
        for (got, want) in run(rotate).into_iter().zip(&want) {
            got.into_data()
                .assert_approx_eq::<f32>(&want.to_data(), Tolerance::absolute(1e-6));
        }
        let inner = |t: &Tensor<AD, 2>| t.clone().inner();
        rotate(x.inner(), &inner(&table.cos), &inner(&table.sin))
            .into_data()
            .assert_approx_eq::<f32>(&want[0].to_data(), Tolerance::absolute(1e-6));
    }
}
