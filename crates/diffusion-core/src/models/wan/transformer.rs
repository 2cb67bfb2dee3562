use burn::{
    module::{Module, Param},
    nn::{Linear, LinearConfig},
    tensor::{backend::Backend, DType, Distribution, Tensor},
};

use super::{checkpoint, RopeTable, WanBlock, WanConditionEmbedder, WanConfig};
use crate::{
    error::{CoreError, Result},
    models::model::VelocityModel,
    ops::linear::linear,
    ops::modulation::modulate,
    train::checkpointing::Checkpointing,
    train::precision::{cast_frozen, to_dtype, trainable_outside_adapters, Precision},
};

/// The Wan2.1 text-to-video diffusion transformer.
///
/// `x [B, C, F, H, W]` -> 3D patches -> tokens `[B, L, D]` (`L = F/p_t * H/p_h * W/p_w`) ->
/// `num_layers` [`WanBlock`]s conditioned on time (adaLN) and text (cross-attention) ->
/// modulated norm -> linear head -> unpatchify to `[B, C_out, F, H, W]`.
#[derive(Module, Debug)]
pub struct WanTransformer<B: Backend> {
    /// 3D patch embedding as a linear map over flattened `(C, p_t, p_h, p_w)` patches
    /// (`patch_embedding`, a strided Conv3d in diffusers).
    pub patch_embedding: Linear<B>,
    /// Time and text embeddings (`condition_embedder`).
    pub condition: WanConditionEmbedder<B>,
    /// Transformer blocks.
    pub blocks: Vec<WanBlock<B>>,
    /// Output head (`proj_out`).
    pub proj_out: Linear<B>,
    /// Learned offsets of the final shift and scale, `[1, 2, D]`.
    pub scale_shift_table: Param<Tensor<B, 3>>,
    patch: [usize; 3],
    heads: usize,
    in_channels: usize,
    out_channels: usize,
    text_dim: usize,
    rope_max: usize,
    eps: f64,
    #[module(skip)]
    checkpointing: Checkpointing,
    #[module(skip)]
    ffn_chunk: Option<usize>,
}

impl<B: Backend> WanTransformer<B> {
    pub(crate) fn new(cfg: &WanConfig, device: &B::Device) -> Self {
        let d = cfg.dim();
        let [pt, ph, pw] = cfg.patch_size;
        let patch_len = pt * ph * pw;
        Self {
            patch_embedding: LinearConfig::new(cfg.in_channels * patch_len, d).init(device),
            condition: WanConditionEmbedder::new(cfg.freq_dim, d, cfg.text_dim, device),
            blocks: (0..cfg.num_layers)
                .map(|_| {
                    WanBlock::new(
                        d,
                        cfg.ffn_dim,
                        cfg.num_attention_heads,
                        cfg.cross_attn_norm,
                        cfg.eps,
                        device,
                    )
                })
                .collect(),
            proj_out: LinearConfig::new(d, cfg.out_channels * patch_len).init(device),
            scale_shift_table: Param::from_tensor(Tensor::random(
                [1, 2, d],
                Distribution::Normal(0.0, 1.0 / (d as f64).sqrt()),
                device,
            )),
            patch: cfg.patch_size,
            heads: cfg.num_attention_heads,
            in_channels: cfg.in_channels,
            out_channels: cfg.out_channels,
            text_dim: cfg.text_dim,
            rope_max: cfg.rope_max_seq_len,
            eps: cfg.eps,
            checkpointing: Checkpointing::None,
            ffn_chunk: None,
        }
    }

    /// Checkpoints the blocks `checkpointing` selects ([`super::checkpoint`]): under autodiff
    /// each keeps only its input and recomputes its activations in the backward.
    ///
    /// # Errors
    /// `Invalid` for `every_nth = 0`, or when a LoRA adapter of a selected block uses dropout
    /// (its masks would not be replayed).
    pub fn with_checkpointing(mut self, checkpointing: Checkpointing) -> Result<Self> {
        checkpointing.validate()?;
        let unsupported = self
            .blocks
            .iter()
            .enumerate()
            .any(|(i, b)| checkpointing.selects(i) && !checkpoint::supported(b));
        if unsupported {
            return Err(crate::error::invalid(
                "checkpointing",
                "blocks with LoRA dropout cannot be checkpointed: set lora.dropout = 0",
            ));
        }
        self.checkpointing = checkpointing;
        Ok(self)
    }

    /// Tokens per chunk of a checkpointed block's recomputed feed-forward (`None`, the
    /// default: [`checkpoint::FFN_CHUNK_VALUES`] hidden values per chunk): smaller chunks bound
    /// the recompute's working set at long videos for a few more, smaller matrix products.
    ///
    /// # Errors
    /// `Invalid` for `Some(0)`.
    pub fn with_ffn_chunk(mut self, tokens: Option<usize>) -> Result<Self> {
        if tokens == Some(0) {
            return Err(crate::error::invalid(
                "ffn_chunk",
                "must be at least 1 token",
            ));
        }
        self.ffn_chunk = tokens;
        Ok(self)
    }

    /// Stores the frozen weights in `precision` and computes in it ([`crate::train::precision`]):
    /// the inputs are cast on entry, the outputs of [`WanTransformer::forward`] and
    /// [`WanTransformer::forward_trunk`] come back in f32, and LoRA adapters (trainable, f32)
    /// compute in their own dtype.
    ///
    /// # Errors
    /// `Invalid` naming `precision` when a weight outside the LoRA adapters trains (full
    /// fine-tuning keeps f32), or when the backend does not support the dtype on `device`.
    pub fn with_frozen_precision(self, precision: Precision, device: &B::Device) -> Result<Self> {
        if precision == Precision::F32 {
            return Ok(self);
        }
        precision.check::<B>(device, "precision")?;
        if let Some(path) = trainable_outside_adapters(&self) {
            return Err(crate::error::invalid(
                "precision",
                format!(
                    "{precision} needs every trainable weight in a LoRA adapter; `{path}` trains \
                     (train adapters, or keep f32)"
                ),
            ));
        }
        Ok(cast_frozen(self, precision))
    }

    /// The dtype the model computes in: that of its (frozen) weights.
    pub fn compute_dtype(&self) -> DType {
        self.patch_embedding.weight.val().dtype()
    }

    /// Which blocks are checkpointed.
    pub fn checkpointing(&self) -> Checkpointing {
        self.checkpointing
    }

    /// Model width.
    pub fn dim(&self) -> usize {
        self.scale_shift_table.dims()[2]
    }

    /// The configuration this model was built from.
    pub fn config(&self) -> WanConfig {
        let shape =
            |p: &burn::module::Param<burn::tensor::Tensor<B, 2>>| p.lazy_shape().dims::<2>();
        let [freq_dim, _] = shape(&self.condition.time_linear_1.weight);
        let [text_dim, _] = shape(&self.condition.text_linear_1.weight);
        let ffn_dim = self
            .blocks
            .first()
            .map_or(0, |b| shape(&b.ffn_in.base.weight)[1]);
        WanConfig {
            patch_size: self.patch_size(),
            num_attention_heads: self.heads,
            attention_head_dim: self.dim() / self.heads,
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            text_dim,
            freq_dim,
            ffn_dim,
            num_layers: self.blocks.len(),
            cross_attn_norm: self.blocks.first().is_some_and(|b| b.norm2.is_some()),
            eps: self.eps,
            rope_max_seq_len: self.rope_max,
        }
    }

    /// Patch size `(p_t, p_h, p_w)`.
    pub fn patch_size(&self) -> [usize; 3] {
        self.patch
    }

    /// Patch grid `[F', H', W']` of a latent `[.., F, H, W]`.
    fn grid(&self, f: usize, h: usize, w: usize) -> [usize; 3] {
        [f / self.patch[0], h / self.patch[1], w / self.patch[2]]
    }

    /// Patchifies and embeds a latent.
    ///
    /// # Shapes
    /// - `x`: `[B, C, F, H, W]` -> `[B, L, D]`
    pub fn embed_patches(&self, x: Tensor<B, 5>) -> Tensor<B, 3> {
        let [b, c, f, h, w] = x.dims();
        let [pt, ph, pw] = self.patch;
        let [gf, gh, gw] = self.grid(f, h, w);
        // at most 6 dimensions at a time, for backends such as ndarray
        let x: Tensor<B, 6> = x.reshape([b * c * gf, pt, gh, ph, gw, pw]);
        let x: Tensor<B, 5> =
            x.permute([0, 2, 4, 1, 3, 5])
                .reshape([b, c, gf, gh * gw, pt * ph * pw]);
        // -> [B, F', H' W', C, p_t p_h p_w], the Conv3d's flattening order per patch
        let x = x.permute([0, 2, 3, 1, 4]);
        let patches = x.reshape([b, gf * gh * gw, c * pt * ph * pw]);
        linear(
            &self.patch_embedding,
            to_dtype(patches, self.compute_dtype()),
        )
    }

    /// Rotary tables of the latent's patch grid.
    pub fn rope(&self, f: usize, h: usize, w: usize, device: &B::Device) -> RopeTable<B> {
        let head_dim = self.dim() / self.heads;
        let table = RopeTable::new(head_dim, self.grid(f, h, w), 10000.0, device);
        let dtype = self.compute_dtype();
        RopeTable {
            cos: to_dtype(table.cos, dtype),
            sin: to_dtype(table.sin, dtype),
        }
    }

    /// Hidden tokens after the first `depth` blocks (all blocks if `depth >= num_layers`), with
    /// the time embedding; the trunk that process reward models reuse (PRFL).
    ///
    /// # Shapes
    /// - `x`: `[B, C, F, H, W]`, `timestep`: `[B]`, `text`: `[B, S, text_dim]`
    /// - output: (`tokens`: `[B, L, D]`, `temb`: `[B, D]`), f32
    pub fn forward_trunk(
        &self,
        x: Tensor<B, 5>,
        timestep: Tensor<B, 1>,
        text: Tensor<B, 3>,
        depth: usize,
    ) -> (Tensor<B, 3>, Tensor<B, 2>) {
        let (tokens, temb) = self.trunk(x, timestep, text, depth);
        (to_dtype(tokens, DType::F32), to_dtype(temb, DType::F32))
    }

    /// [`WanTransformer::forward_trunk`] in the compute dtype.
    fn trunk(
        &self,
        x: Tensor<B, 5>,
        timestep: Tensor<B, 1>,
        text: Tensor<B, 3>,
        depth: usize,
    ) -> (Tensor<B, 3>, Tensor<B, 2>) {
        let [_, _, f, h, w] = x.dims();
        let rope = self.rope(f, h, w, &x.device());
        let mut tokens = self.embed_patches(x);
        let (temb, modulation) = self.condition.time(timestep);
        let text = self.condition.text(text);
        for (i, block) in self.blocks.iter().take(depth).enumerate() {
            tokens = if self.checkpointing.selects(i) {
                checkpoint::checkpointed(
                    block,
                    tokens,
                    text.clone(),
                    modulation.clone(),
                    &rope,
                    self.ffn_chunk,
                )
            } else {
                block.forward(tokens, text.clone(), modulation.clone(), &rope)
            };
        }
        (tokens, temb)
    }

    /// Full forward pass.
    ///
    /// # Shapes
    /// - `x`: `[B, C_in, F, H, W]` with `F, H, W` divisible by the patch size
    /// - `timestep`: `[B]`, `text`: `[B, S, text_dim]`
    /// - output: `[B, C_out, F, H, W]`, f32
    pub fn forward(
        &self,
        x: Tensor<B, 5>,
        timestep: Tensor<B, 1>,
        text: Tensor<B, 3>,
    ) -> Tensor<B, 5> {
        let [b, _, f, h, w] = x.dims();
        let (tokens, temb) = self.trunk(x, timestep, text, self.blocks.len());
        let d = self.dim();
        // [1, 2, D] + [B, 1, D] -> shift, scale
        let ss = (self.scale_shift_table.val() + temb.reshape([b, 1, d])).chunk(2, 1);
        let tokens = modulate(tokens, ss[0].clone(), ss[1].clone(), self.eps);
        let out = to_dtype(linear(&self.proj_out, tokens), DType::F32);
        let [pt, ph, pw] = self.patch;
        let [gf, gh, gw] = self.grid(f, h, w);
        let c = self.out_channels;
        // a token holds (p_t, p_h, p_w, C): [B, F', H' W', K, C] -> [B, C, F', H' W', K]
        let out: Tensor<B, 5> = out.reshape([b, gf, gh * gw, pt * ph * pw, c]);
        let out: Tensor<B, 6> =
            out.permute([0, 4, 1, 2, 3])
                .reshape([b * c * gf, gh, gw, pt, ph, pw]);
        // -> [B C F', p_t, H', p_h, W', p_w]
        out.permute([0, 3, 1, 4, 2, 5]).reshape([b, c, f, h, w])
    }
}

impl<B: Backend> VelocityModel<B> for WanTransformer<B> {
    fn velocity(
        &self,
        x: Tensor<B, 5>,
        timestep: Tensor<B, 1>,
        text: Tensor<B, 3>,
    ) -> Tensor<B, 5> {
        self.forward(x, timestep, text)
    }

    fn check_input(&self, latent: [usize; 5], text: [usize; 3]) -> Result<()> {
        let [b, c, f, h, w] = latent;
        let bad = |what: &str, expected: Vec<usize>, found: Vec<usize>| {
            Err(CoreError::Shape {
                what: what.to_string(),
                expected,
                found,
            })
        };
        if c != self.in_channels || b == 0 {
            return bad(
                "latent channels",
                vec![b.max(1), self.in_channels, f, h, w],
                latent.to_vec(),
            );
        }
        let grid = self.grid(f, h, w);
        if f % self.patch[0] != 0
            || h % self.patch[1] != 0
            || w % self.patch[2] != 0
            || grid.contains(&0)
        {
            return bad(
                "latent frames/height/width (multiples of the patch size)",
                self.patch.to_vec(),
                vec![f, h, w],
            );
        }
        if grid.iter().any(|&g| g > self.rope_max) {
            return bad(
                "patch grid (rope_max_seq_len per axis)",
                vec![self.rope_max; 3],
                grid.to_vec(),
            );
        }
        if text[0] != b || text[2] != self.text_dim || text[1] == 0 {
            return bad(
                "text embeddings",
                vec![b, text[1].max(1), self.text_dim],
                text.to_vec(),
            );
        }
        Ok(())
    }
}
