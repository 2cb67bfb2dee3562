//! Token-wise linear layers as one 2-D matrix product.
//!
//! burn's `Linear::forward` on a `[B, L, Din]` input multiplies by the weight broadcast to
//! `[1, Din, Dout]`. Its backward copies the transposed weight into a contiguous
//! `[1, Dout, Din]` tensor for the input gradient, and builds a `[B, Din, Dout]` weight gradient
//! that it then sums over the batch. On the CPU backend the copy of a 512 x 2048 weight took
//! about as long as the product itself (profile in `docs/benchmarks.md`). [`linear`] flattens
//! the tokens to `[B L, Din]` instead, so that the forward and both gradients are plain 2-D
//! products, which flex runs over strided (transposed) views without copying.

use burn::{
    nn::Linear,
    tensor::{backend::Backend, Tensor},
};

/// `x W + b` over the last axis of `x`, equal to `layer.forward(x)`.
///
/// # Shapes
/// - `x`: `[..., Din]` -> `[..., Dout]`
pub fn linear<B: Backend, const D: usize>(layer: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let mut dims = x.dims();
    let [d_in, d_out] = layer.weight.dims();
    let rows = dims[..D - 1].iter().product();
    let y = x.reshape([rows, d_in]).matmul(layer.weight.val());
    let y = match &layer.bias {
        Some(bias) => y + bias.val().unsqueeze_dim(0),
        None => y,
    };
    dims[D - 1] = d_out;
    y.reshape(dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::DefaultBackend;
    use burn::{
        backend::Autodiff,
        module::Param,
        tensor::{TensorData, Tolerance},
    };

    type AD = Autodiff<DefaultBackend>;

    /// Value and gradients (input, weight, bias) equal burn's `Linear::forward`.
    #[test]
    fn equals_burns_linear() {
        let dev = Default::default();
        let weight = TensorData::new(vec![1.0f32, -2.0, 0.5, 3.0, 0.0, 1.5], [3, 2]);
        let layer = Linear {
            weight: Param::from_data(weight, &dev),
            bias: Some(Param::from_data([0.25f32, -1.0], &dev)),
        };
        let values: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
        let x = Tensor::<AD, 3>::from_data(TensorData::new(values, [2, 2, 3]), &dev);
        let run = |f: &dyn Fn(Tensor<AD, 3>) -> Tensor<AD, 3>| {
            let x = x.clone().require_grad();
            let y = f(x.clone());
            let grads = (y.clone() * y.clone()).sum().backward();
            let bias = layer.bias.as_ref().unwrap();
            [
                y.inner().into_data(),
                x.grad(&grads).unwrap().into_data(),
                layer.weight.grad(&grads).unwrap().into_data(),
                bias.grad(&grads).unwrap().into_data(),
            ]
        };
        let want = run(&|x| layer.forward(x));
        for (got, want) in run(&|x| linear(&layer, x)).iter().zip(&want) {
            got.assert_approx_eq::<f32>(want, Tolerance::absolute(1e-5));
        }
        // by hand: the first token (-1, -0.75, -0.5) gives -1 * 1 - 0.75 * 0.5 - 0.5 * 0 + 0.25
        let y0 = want[0].to_vec::<f32>().unwrap()[0];
        assert!((y0 - (-1.125)).abs() < 1e-6, "{y0}");
    }
}
