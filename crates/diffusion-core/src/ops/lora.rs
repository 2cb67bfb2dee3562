//! Low-rank adapters on linear layers: LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of
//! Large Language Models", arXiv 2106.09685), laid out as PEFT stores them.
//!
//! `y = x W + b + (alpha / rank) * dropout(x) A B` with `A [in, rank]` (PEFT's `lora_A.weight`,
//! transposed) initialised as PEFT does (Kaiming-uniform) and `B [rank, out]` (`lora_B.weight`,
//! transposed) initialised to zero, so a fresh adapter leaves the layer's output unchanged.

use burn::{
    config::Config,
    module::{Module, Param},
    nn::{Dropout, DropoutConfig, Linear},
    tensor::{backend::Backend, DType, Distribution, Tensor},
};

use crate::{error::invalid, ops::linear::linear, train::precision::to_dtype};

/// Which layers of a transformer block get adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraTarget {
    /// Self-attention q, k, v and output projections (`attn1.to_q/to_k/to_v/to_out.0`).
    SelfAttention,
    /// Cross-attention q, k, v and output projections (`attn2.*`).
    CrossAttention,
    /// The feed-forward network (`ffn.net.0.proj`, `ffn.net.2`).
    FeedForward,
}

/// Adapter settings.
#[derive(Config, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank of `A B`.
    pub rank: usize,
    /// Scale numerator: the update is `alpha / rank * A B`. `None` means `alpha = rank`.
    #[config(default = "None")]
    pub alpha: Option<f64>,
    /// Layers that get adapters; the anchors' Wan LoRAs adapt both attentions.
    #[config(default = "vec![LoraTarget::SelfAttention, LoraTarget::CrossAttention]")]
    pub targets: Vec<LoraTarget>,
    /// Dropout on the adapter's input while training (PEFT's `lora_dropout`).
    #[config(default = 0.0)]
    pub dropout: f64,
}

impl LoraConfig {
    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha.unwrap_or(self.rank as f64) / self.rank as f64
    }

    /// Checks rank, alpha, dropout and targets.
    pub fn validate(&self) -> crate::Result<()> {
        if self.rank == 0 || self.rank > 4096 {
            return Err(invalid(
                "lora.rank",
                format!("must be in 1..=4096, got {}", self.rank),
            ));
        }
        if let Some(alpha) = self.alpha {
            if !alpha.is_finite() || alpha <= 0.0 {
                return Err(invalid("lora.alpha", format!("must be > 0, got {alpha}")));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(invalid(
                "lora.dropout",
                format!("must be in [0, 1), got {}", self.dropout),
            ));
        }
        if self.targets.is_empty() {
            return Err(invalid("lora.targets", "at least one target"));
        }
        Ok(())
    }
}

/// The trainable low-rank pair of one layer.
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    /// `A`, `[in, rank]`.
    pub down: Param<Tensor<B, 2>>,
    /// `B`, `[rank, out]`.
    pub up: Param<Tensor<B, 2>>,
    dropout: Option<Dropout>,
    scale: f64,
}

impl<B: Backend> Lora<B> {
    /// A fresh adapter for a `[d_in, d_out]` layer (zero update).
    pub fn new(d_in: usize, d_out: usize, config: &LoraConfig, device: &B::Device) -> Self {
        // Kaiming-uniform with a = sqrt(5) over fan-in `d_in`, as PEFT's `lora_A` init
        let bound = 1.0 / (d_in as f64).sqrt();
        Self {
            down: Param::from_tensor(Tensor::random(
                [d_in, config.rank],
                Distribution::Uniform(-bound, bound),
                device,
            )),
            up: Param::from_tensor(Tensor::zeros([config.rank, d_out], device)),
            dropout: (config.dropout > 0.0).then(|| DropoutConfig::new(config.dropout).init()),
            scale: config.scale(),
        }
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// `scale * A B`, `[in, out]`.
    pub fn delta(&self) -> Tensor<B, 2> {
        self.down.val().matmul(self.up.val()).mul_scalar(self.scale)
    }

    /// `scale * dropout(x) A B`, computed in `x`'s dtype: on a half-precision base the f32
    /// adapter weights are cast down for the products (their gradients come back in f32), as
    /// mixed-precision training does, so no f32 copy of `x` is kept for the backward
    /// ([`crate::train::precision`]).
    ///
    /// # Shapes
    /// - `x`: `[rows, in]` -> `[rows, out]`
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let dtype = x.dtype();
        let x = match &self.dropout {
            Some(d) => d.forward(x),
            None => x,
        };
        x.matmul(to_dtype(self.down.val(), dtype))
            .matmul(to_dtype(self.up.val(), dtype))
            .mul_scalar(self.scale)
    }

    /// The dtype of the adapter's weights.
    pub fn dtype(&self) -> DType {
        self.down.val().dtype()
    }
}

/// A linear layer with an optional adapter.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// The base layer (frozen while an adapter trains).
    pub base: Linear<B>,
    /// The adapter, when present.
    pub adapter: Option<Lora<B>>,
    /// Whether the adapter is folded into `base` (then the forward skips it).
    merged: bool,
}

impl<B: Backend> From<Linear<B>> for LoraLinear<B> {
    fn from(base: Linear<B>) -> Self {
        Self {
            base,
            adapter: None,
            merged: false,
        }
    }
}

impl<B: Backend> LoraLinear<B> {
    /// `x W + b` plus the adapter's update.
    ///
    /// # Shapes
    /// - `x`: `[..., in]` -> `[..., out]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self.active_adapter() {
            None => linear(&self.base, x),
            Some(adapter) => {
                let dims = x.dims();
                let [d_in, d_out] = self.base.weight.dims();
                let rows = dims[..D - 1].iter().product();
                let flat = x.reshape([rows, d_in]);
                let y = linear(&self.base, flat.clone()) + adapter.forward(flat);
                let mut out = dims;
                out[D - 1] = d_out;
                y.reshape(out)
            }
        }
    }

    /// The adapter when it is applied on top of the base layer (present and not merged).
    pub fn active_adapter(&self) -> Option<&Lora<B>> {
        self.adapter.as_ref().filter(|_| !self.merged)
    }

    /// Whether the adapter applies dropout to its input.
    pub fn has_dropout(&self) -> bool {
        self.active_adapter().is_some_and(|a| a.dropout.is_some())
    }

    /// Adds a fresh adapter and freezes the base layer.
    pub fn adapt(self, config: &LoraConfig, device: &B::Device) -> Self {
        let [d_in, d_out] = self.base.weight.lazy_shape().dims::<2>();
        Self {
            base: self.base.no_grad(),
            adapter: Some(Lora::new(d_in, d_out, config, device)),
            merged: false,
        }
    }

    /// Folds the adapter into the base weight (for inference or export); the adapter is kept so
    /// [`LoraLinear::unmerge`] can take it out again.
    pub fn merge(mut self) -> Self {
        if let (Some(adapter), false) = (&self.adapter, self.merged) {
            let delta = adapter.delta();
            self.base.weight = self.base.weight.map(|w| {
                let dtype = w.dtype();
                w + to_dtype(delta, dtype)
            });
            self.merged = true;
        }
        self
    }

    /// Takes a merged adapter out of the base weight again.
    pub fn unmerge(mut self) -> Self {
        if let (Some(adapter), true) = (&self.adapter, self.merged) {
            let delta = adapter.delta();
            self.base.weight = self.base.weight.map(|w| {
                let dtype = w.dtype();
                w - to_dtype(delta, dtype)
            });
            self.merged = false;
        }
        self
    }

    /// Whether the adapter is folded into the base weight.
    pub fn is_merged(&self) -> bool {
        self.merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::DefaultBackend;
    use burn::{nn::LinearConfig, tensor::TensorData};

    type B = DefaultBackend;

    #[test]
    fn update_is_scaled_low_rank_product_and_merges_exactly() {
        let dev = Default::default();
        let base: Linear<B> = LinearConfig::new(3, 2).init(&dev);
        let mut layer =
            LoraLinear::from(base).adapt(&LoraConfig::new(1).with_alpha(Some(2.0)), &dev);
        let x = Tensor::<B, 2>::from_data(TensorData::new(vec![1.0f32, 2.0, -1.0], [1, 3]), &dev);
        // B = 0: the fresh adapter changes nothing
        let plain = linear(&layer.base, x.clone());
        plain
            .clone()
            .into_data()
            .assert_eq(&layer.forward(x.clone()).into_data(), true);
        let a = layer.adapter.as_mut().unwrap();
        a.down = Param::from_data([[1.0f32], [0.0], [1.0]], &dev);
        a.up = Param::from_data([[0.5f32, -1.0]], &dev);
        // (1, 2, 3) A = 4, times B = (2, -4), times alpha / rank = 2: (4, -8)
        let x = Tensor::<B, 2>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0], [1, 3]), &dev);
        let want: Vec<f32> = linear(&layer.base, x.clone())
            .into_data()
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .zip([4.0f32, -8.0])
            .map(|(y, d)| y + d)
            .collect();
        // equal to round-off (merging sums the weight in another order)
        let close = |got: Vec<f32>| {
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
            }
        };
        let values = |t: Tensor<B, 2>| t.into_data().to_vec::<f32>().unwrap();
        close(values(layer.forward(x.clone())));
        let merged = layer.merge();
        assert!(merged.is_merged());
        close(values(merged.forward(x.clone())));
        let back = merged.unmerge();
        assert!(!back.is_merged());
        close(values(back.forward(x)));
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(LoraConfig::new(0).validate().is_err());
        assert!(LoraConfig::new(4)
            .with_alpha(Some(f64::NAN))
            .validate()
            .is_err());
        assert!(LoraConfig::new(4).with_dropout(1.0).validate().is_err());
        assert!(LoraConfig::new(4).with_targets(vec![]).validate().is_err());
        assert_eq!(LoraConfig::new(8).scale(), 1.0);
    }
}
