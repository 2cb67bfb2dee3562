use burn::{
    module::Module,
    nn::{Linear, LinearConfig},
    tensor::{activation::silu, backend::Backend, Tensor},
};

use crate::{ops::activation::gelu_tanh, ops::linear::linear, train::precision::to_dtype};

/// Sinusoidal timestep features, `[cos(t w_i), sin(t w_i)]` with `w_i = 10000^(-i / half)`
/// (diffusers `Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0)`).
///
/// # Shapes
/// - `t`: `[B]` -> `[B, dim]`
pub fn timestep_sinusoid<B: Backend>(t: Tensor<B, 1>, dim: usize) -> Tensor<B, 2> {
    let half = dim / 2;
    let device = t.device();
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f64.ln()) * i as f64 / half as f64).exp() as f32)
        .collect();
    let freqs = Tensor::<B, 1>::from_floats(freqs.as_slice(), &device).unsqueeze::<2>();
    let args = t.unsqueeze_dim::<2>(1) * freqs;
    Tensor::cat(vec![args.clone().cos(), args.sin()], 1)
}

/// Time and text conditioning of Wan (`WanTimeTextImageEmbedding` without the image branch).
#[derive(Module, Debug)]
pub struct WanConditionEmbedder<B: Backend> {
    /// `time_embedder.linear_1`: freq_dim -> dim.
    pub time_linear_1: Linear<B>,
    /// `time_embedder.linear_2`: dim -> dim.
    pub time_linear_2: Linear<B>,
    /// `time_proj`: dim -> 6 dim, the six modulation vectors of every block.
    pub time_proj: Linear<B>,
    /// `text_embedder.linear_1`: text_dim -> dim.
    pub text_linear_1: Linear<B>,
    /// `text_embedder.linear_2`: dim -> dim.
    pub text_linear_2: Linear<B>,
    freq_dim: usize,
}

impl<B: Backend> WanConditionEmbedder<B> {
    pub(crate) fn new(freq_dim: usize, dim: usize, text_dim: usize, device: &B::Device) -> Self {
        let lin = |i, o| LinearConfig::new(i, o).init(device);
        Self {
            time_linear_1: lin(freq_dim, dim),
            time_linear_2: lin(dim, dim),
            time_proj: lin(dim, 6 * dim),
            text_linear_1: lin(text_dim, dim),
            text_linear_2: lin(dim, dim),
            freq_dim,
        }
    }

    /// Time embedding `temb` and the per-block modulation `proj`.
    ///
    /// # Shapes
    /// - `t`: `[B]` -> (`temb`: `[B, D]`, `proj`: `[B, 6, D]`)
    pub fn time(&self, t: Tensor<B, 1>) -> (Tensor<B, 2>, Tensor<B, 3>) {
        let feats = timestep_sinusoid(t, self.freq_dim);
        let feats = to_dtype(feats, self.time_linear_1.weight.val().dtype());
        let temb = self
            .time_linear_2
            .forward(silu(self.time_linear_1.forward(feats)));
        let proj = self.time_proj.forward(silu(temb.clone()));
        let [b, d6] = proj.dims();
        (temb, proj.reshape([b, 6, d6 / 6]))
    }

    /// Projects text embeddings to the model width (PixArt-alpha text projection, GELU-tanh).
    ///
    /// # Shapes
    /// - `text`: `[B, L, text_dim]` -> `[B, L, D]`
    pub fn text(&self, text: Tensor<B, 3>) -> Tensor<B, 3> {
        let text = to_dtype(text, self.text_linear_1.weight.val().dtype());
        let hidden = gelu_tanh(linear(&self.text_linear_1, text));
        linear(&self.text_linear_2, hidden)
    }
}
