//! The precision frozen weights are stored and computed in. Half precision halves the bytes of
//! the weights that do not train (the base model under LoRA, the process reward's trunk, a
//! reference model) and of the activations computed from them; trainable parameters, their
//! gradients, the optimiser state and the loss stay f32.
//!
//! [`cast_frozen`] casts every parameter that does not require a gradient; a model computes in
//! the dtype of its frozen weights and casts at the boundaries: its inputs on entry, its output
//! back to f32; a LoRA adapter's f32 weights are cast down for its products, their gradients
//! come back in f32 (mixed-precision training's master weights). Attention and its backward
//! upcast groups of heads to f32 (softmax and log-sum-exp in f32) and hand back the inputs'
//! dtype.

use std::{fmt, str::FromStr};

use burn::{
    module::{Module, ModuleMapper, ModuleVisitor, Param},
    tensor::{backend::Backend, DType, FloatDType, Tensor},
};
use serde::{Deserialize, Serialize};

use crate::error::{invalid, CoreError, Result};

/// Storage and compute precision of frozen weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// 32-bit floats.
    #[default]
    F32,
    /// bfloat16 (8-bit exponent as f32, 8-bit mantissa): CUDA (compute capability 8.0+) and
    /// the CPU backend.
    Bf16,
    /// IEEE half (5-bit exponent, 11-bit mantissa): CUDA, the CPU backend, and wgpu on devices
    /// with `shader-f16`.
    F16,
}

impl Precision {
    /// The tensor dtype.
    pub fn dtype(self) -> FloatDType {
        match self {
            Self::F32 => FloatDType::F32,
            Self::Bf16 => FloatDType::BF16,
            Self::F16 => FloatDType::F16,
        }
    }

    /// Bytes per value.
    pub fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 | Self::F16 => 2,
        }
    }

    /// Whether backend `B` stores and computes this dtype on `device`.
    ///
    /// # Errors
    /// `Invalid` naming `field` when it does not.
    pub fn check<B: Backend>(self, device: &B::Device, field: &'static str) -> Result<()> {
        if B::supports_dtype(device, self.dtype().into()) {
            return Ok(());
        }
        Err(invalid(
            field,
            format!("{self} is not supported by this backend on {device:?}; use f32"),
        ))
    }
}

/// `f32`, `bf16`, `f16`.
impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        })
    }
}

impl FromStr for Precision {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            "f16" => Ok(Self::F16),
            _ => Err(invalid(
                "precision",
                format!("`{s}`: expected f32, bf16 or f16"),
            )),
        }
    }
}

/// `x` in `dtype` (no operation when it already is).
pub fn to_dtype<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if x.dtype() == dtype {
        x
    } else {
        x.cast(FloatDType::from(dtype))
    }
}

/// Casts every float parameter of `module` that does not require a gradient to `precision`;
/// trainable ones keep their dtype.
pub fn cast_frozen<B: Backend, M: Module<B>>(module: M, precision: Precision) -> M {
    module.map(&mut CastFrozen(precision.dtype()))
}

/// The module path (`blocks.0.attn1.to_q.base`) of the first parameter of `module` that
/// requires a gradient outside a LoRA adapter, if any: such a model cannot compute in the
/// precision of its frozen weights.
pub fn trainable_outside_adapters<B: Backend, M: Module<B>>(module: &M) -> Option<String> {
    let mut visitor = TrainableOutside::default();
    module.visit(&mut visitor);
    visitor.found
}

#[derive(Default)]
struct TrainableOutside {
    path: Vec<(String, bool)>,
    found: Option<String>,
}

impl<B: Backend> ModuleVisitor<B> for TrainableOutside {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path
            .push((name.to_string(), container_type == "Struct:Lora"));
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let in_adapter = self.path.iter().any(|(_, lora)| *lora);
        if self.found.is_none() && !in_adapter && param.is_require_grad() {
            let names: Vec<&str> = self.path.iter().map(|(n, _)| n.as_str()).collect();
            self.found = Some(names.join("."));
        }
    }
}

/// The dtype of every float parameter of `module`, in visiting order.
pub fn param_dtypes<B: Backend, M: Module<B>>(module: &M) -> Vec<DType> {
    struct Dtypes(Vec<DType>);
    impl<B: Backend> ModuleVisitor<B> for Dtypes {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            self.0.push(p.val().dtype());
        }
    }
    let mut d = Dtypes(Vec::new());
    module.visit(&mut d);
    d.0
}

/// Casts the float parameters of `module` to `dtypes` (in visiting order, as
/// [`param_dtypes`] lists them; parameters past the list keep theirs): a record loaded into a
/// half-precision model arrives in the recorder's precision, this puts it back.
pub fn with_param_dtypes<B: Backend, M: Module<B>>(module: M, dtypes: &[DType]) -> M {
    struct Restore<'a>(&'a [DType], usize);
    impl<B: Backend> ModuleMapper<B> for Restore<'_> {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let want = self.0.get(self.1).copied();
            self.1 += 1;
            match want {
                Some(dtype) if p.val().dtype() != dtype => p.map(|t| {
                    let trains = t.is_require_grad();
                    let t = to_dtype(t.detach(), dtype);
                    if trains {
                        t.require_grad()
                    } else {
                        t
                    }
                }),
                _ => p,
            }
        }
    }
    module.map(&mut Restore(dtypes, 0))
}

struct CastFrozen(FloatDType);

impl<B: Backend> ModuleMapper<B> for CastFrozen {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if param.is_require_grad() {
            return param;
        }
        let dtype = self.0.into();
        param.map(|t| to_dtype(t, dtype))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Flex;
    use burn::{backend::Autodiff, nn::LinearConfig};

    #[test]
    fn parses_and_prints() {
        for p in [Precision::F32, Precision::Bf16, Precision::F16] {
            assert_eq!(p.to_string().parse::<Precision>().unwrap(), p);
        }
        assert!("fp8".parse::<Precision>().is_err());
        assert_eq!(Precision::Bf16.bytes(), 2);
    }

    #[test]
    fn casts_only_frozen_parameters() {
        type AD = Autodiff<Flex>;
        let dev = Default::default();
        let trainable = LinearConfig::new(3, 2).init::<AD>(&dev);
        let frozen = LinearConfig::new(3, 2).init::<AD>(&dev).no_grad();
        let [trainable, frozen] = [trainable, frozen].map(|l| cast_frozen(l, Precision::Bf16));
        assert_eq!(trainable.weight.val().dtype(), DType::F32);
        assert_eq!(frozen.weight.val().dtype(), DType::BF16);
        assert_eq!(frozen.bias.unwrap().val().dtype(), DType::BF16);
        assert!(Precision::Bf16.check::<Flex>(&dev, "precision").is_ok());
    }
}
