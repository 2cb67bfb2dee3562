//! Plumbing for the CPU kernels: flex tensors in and out, and one kernel recorded as one
//! autodiff node under `Autodiff<Flex>` (burn-autodiff's `Backward` API).

use burn::{
    backend::Autodiff,
    tensor::{ops::FloatTensor, Tensor, TensorPrimitive},
};
use burn_autodiff::{
    checkpoint::strategy::NoCheckpointing,
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn_flex::FlexTensor;

use crate::backend::Flex;

/// A tensor of `Autodiff<Flex>`: its inner flex tensor and its autodiff node.
pub(crate) type Tracked = FloatTensor<Autodiff<Flex>>;

/// The contiguous flex tensor of a `Flex` tensor.
pub(crate) fn contiguous<const D: usize>(t: Tensor<Flex, D>) -> FlexTensor {
    t.into_primitive().tensor().to_contiguous()
}

/// A `Flex` tensor from a flex tensor.
pub(crate) fn tensor<const D: usize>(t: FlexTensor) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// The autodiff handle of an `Autodiff<Flex>` tensor and its values, contiguous.
pub(crate) fn split<const D: usize>(t: Tensor<Autodiff<Flex>, D>) -> (Tracked, FlexTensor) {
    let t = t.into_primitive().tensor();
    let values = t.primitive.to_contiguous();
    (t, values)
}

/// `output` as the result of one autodiff node over `inputs` with the backward `op`; its state
/// is built (and kept) only when an input is tracked.
pub(crate) fn record<O: Backward<Flex, N>, const N: usize, const D: usize>(
    op: O,
    inputs: [Tracked; N],
    output: FlexTensor,
    state: impl FnOnce() -> O::State,
) -> Tensor<Autodiff<Flex>, D> {
    let prep = op
        .prepare::<NoCheckpointing>(inputs.map(|t| t.node))
        .compute_bound()
        .stateful();
    let output = match prep {
        OpsKind::Tracked(prep) => prep.finish(state(), output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Tensor::from_primitive(TensorPrimitive::Float(output))
}

/// The gradient of a node's output, contiguous.
pub(crate) fn output_grad<S, const N: usize>(ops: &Ops<S, N>, grads: &mut Gradients) -> FlexTensor {
    grads.consume::<Flex>(&ops.node).to_contiguous()
}

/// Registers `by_input[i]` as the gradient of the node's input `i` where that input is tracked.
pub(crate) fn register<S, const N: usize>(
    ops: &Ops<S, N>,
    grads: &mut Gradients,
    by_input: [FlexTensor; N],
) {
    for (node, grad) in ops.parents.iter().zip(by_input) {
        if let Some(node) = node {
            grads.register::<Flex>(node.id, grad);
        }
    }
}
