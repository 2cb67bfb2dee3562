use burn::tensor::backend::Backend;

use super::{MemoryPlan, TermKind};
use crate::{
    backend::Flex,
    models::wan::checkpoint::ffn_chunk,
    ops::attention::{
        cpu_scratch_bytes,
        recompute::{query_chunk, HALF_GROUP_VALUES},
    },
    ops::dispatch::is,
    ops::lora::{LoraConfig, LoraTarget},
    train::checkpointing::Checkpointing,
    WanConfig,
};

/// Which implementation of the block's operations the backend runs: it decides which tensors
/// each operation keeps for its backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationPath {
    /// The CPU backend's fused kernels (modulation, gated residual, GELU, rotary, attention
    /// are single autodiff nodes that keep their inputs).
    CpuKernels,
    /// Tensor operations (wgpu, cuda): the modulation's layer norm and the GELU keep
    /// intermediates; the attention is the fused node that keeps `q, k, v, out` and the
    /// log-sum-exp.
    TensorOps,
}

impl ActivationPath {
    /// The path backend `B` (the inner backend, without `Autodiff`) takes.
    pub fn of<B: Backend>() -> Self {
        if is::<B, Flex>() {
            Self::CpuKernels
        } else {
            Self::TensorOps
        }
    }
}

/// Which weights of the transformer receive gradients.
#[derive(Debug, Clone, PartialEq)]
pub enum Trainable {
    /// Every weight (full fine-tuning).
    All,
    /// Low-rank adapters on the targets; the base weights are frozen.
    Lora(LoraConfig),
    /// Nothing: a frozen model the gradient flows through (a reward's trunk).
    Frozen,
}

/// One forward + backward of a Wan transformer (or its first blocks) with gradients, the
/// unit the methods' steps are made of.
///
/// # Shapes
/// `rows` rows of `tokens` video tokens and `text` text tokens each, all alive in one graph
/// (a batch of `b` rows through a window of `k` denoising steps with gradients: `rows = b k`).
#[derive(Debug, Clone)]
pub struct DitStep {
    /// The transformer's shape.
    pub model: WanConfig,
    /// Blocks run (a reward trunk runs the first few); `model.num_layers` for the whole model,
    /// which adds the output head.
    pub blocks: usize,
    /// Video tokens per row (latent frames x height x width / patch volume).
    pub tokens: usize,
    /// Text tokens per row.
    pub text: usize,
    /// Rows alive in the graph at once.
    pub rows: usize,
    /// Which blocks are checkpointed.
    pub checkpointing: Checkpointing,
    /// Which weights train.
    pub trainable: Trainable,
    /// The operation path of the backend.
    pub path: ActivationPath,
    /// Bytes per stored weight (4: f32; 2: bf16 or f16).
    pub weight_bytes: usize,
    /// Bytes per activation element.
    pub activation_bytes: usize,
    /// Optimiser states per trainable weight (2 for AdamW's moments), kept in f32.
    pub optimizer_states: usize,
    /// Worker threads of the CPU kernels (each keeps a tile of attention scores).
    pub cpu_threads: usize,
}

/// Bytes the forward keeps: outside the blocks (embeddings, head), and per block, whole or
/// (checkpointed) its input only.
#[derive(Debug, Clone, Copy)]
struct KeptBytes {
    edges: f64,
    full_block: f64,
    input_only: f64,
}

impl KeptBytes {
    fn block(&self, checkpointed: bool) -> f64 {
        if checkpointed {
            self.input_only
        } else {
            self.full_block
        }
    }
}

/// Floats kept per row by one block: per video token and per text token.
#[derive(Debug, Clone, Copy, PartialEq)]
struct BlockFloats {
    video: f64,
    text: f64,
}

impl DitStep {
    /// A whole-model step with f32 weights and activations and AdamW.
    pub fn new(
        model: WanConfig,
        tokens: usize,
        text: usize,
        rows: usize,
        trainable: Trainable,
        path: ActivationPath,
    ) -> Self {
        Self {
            blocks: model.num_layers,
            model,
            tokens,
            text,
            rows,
            checkpointing: Checkpointing::None,
            trainable,
            path,
            weight_bytes: 4,
            activation_bytes: 4,
            optimizer_states: 2,
            cpu_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    fn trains(&self, target: LoraTarget) -> bool {
        match &self.trainable {
            Trainable::All => true,
            Trainable::Lora(l) => l.targets.contains(&target),
            Trainable::Frozen => false,
        }
    }

    fn lora_rank(&self) -> usize {
        match &self.trainable {
            Trainable::Lora(l) => l.rank,
            _ => 0,
        }
    }

    /// Floats one non-checkpointed block keeps for its backward, operation by operation.
    fn block_floats(&self) -> BlockFloats {
        let d = self.model.dim() as f64;
        let f = self.model.ffn_dim as f64;
        let h = self.model.num_attention_heads as f64;
        let r = self.lora_rank() as f64;
        let full = matches!(self.trainable, Trainable::All);
        let on = |b: bool| if b { 1.0 } else { 0.0 };
        let [self_attn, cross, ffn] = [
            LoraTarget::SelfAttention,
            LoraTarget::CrossAttention,
            LoraTarget::FeedForward,
        ]
        .map(|t| self.trains(t));
        // a linear keeps its input only when its weight (or adapter) trains; an adapter also
        // keeps its rank-r intermediate x A
        let adapter = |adapted: bool| on(adapted && !full) * r;
        let cpu = self.path == ActivationPath::CpuKernels;
        // the adaLN modulation: the CPU node keeps its input; the tensor-operation layer norm
        // keeps the centred input twice (square, division) and the normalised one (a product
        // keeps both operands, tracked or not)
        let modulate = if cpu { 1.0 } else { 3.0 };
        // an RMS-normed projection: the projection (kept by the square), the normalised value
        // when the norm's gain trains, the result (kept by the attention)
        let qk = 2.0 + on(full);
        // the attention's output, reshaped for the output projection: a copy on the tensor
        // path, kept when the projection trains
        let out_copy = |trained: bool| on(!cpu && trained);
        // in widths d
        let widths: f64 = [
            modulate,                  // self-attention: modulation
            on(self_attn),             // its output, input of q, k, v
            2.0 * qk,                  // q and k
            1.0,                       // v
            1.0 + out_copy(self_attn), // attention output
            1.0,                       // the gated residual's branch
            1.0 + on(full),            // cross-attention layer norm
            on(cross),                 // its output, input of q
            qk,                        // q
            1.0 + out_copy(cross),     // attention output
            modulate,                  // feed-forward: modulation
            on(ffn),                   // its output, input of the up projection
            1.0,                       // the gated residual's branch
        ]
        .iter()
        .sum();
        // GELU: its input (tensor path: also tanh and 1 + tanh); its output, input of the
        // down projection
        let hidden = if cpu { 1.0 } else { 3.0 } + on(ffn);
        // adapters' rank-r intermediates: q, k, v, out of each adapted attention, both
        // feed-forward projections
        let adapters = 4.0 * adapter(self_attn) + 2.0 * adapter(cross) + 2.0 * adapter(ffn);
        // two attentions' log-sum-exp per head
        let video = widths * d + hidden * f + adapters + 2.0 * h;
        // cross-attention keys and values over the text
        let text = (qk + 1.0) * d + 2.0 * adapter(cross);
        BlockFloats { video, text }
    }

    /// The extra working set of one checkpointed block's backward (`models::wan::checkpoint`)
    /// over the transients every backward has, per row: the recomputed block's tensors that
    /// its hand-derived backward reads, at its peak (the feed-forward's backward, over one chunk
    /// of tokens, with the GELU derivative's temporaries). Per token `7 d` and, over the
    /// feed-forward chunk, `4.5 f`: fitted to the CPU backend's measured peaks of
    /// `examples/plan_check.rs` (widths 128 and 256, feed-forward 4x and 6x, one chunk); the
    /// backend updates unshared temporaries in place, which an operation count misses.
    fn recompute_floats(&self) -> f64 {
        let (d, f) = (self.model.dim() as f64, self.model.ffn_dim as f64);
        let chunk = ffn_chunk(None, self.rows, self.tokens, self.model.ffn_dim);
        7.0 * d * self.tokens as f64 + 4.5 * f * chunk as f64
    }

    fn block_params(&self) -> f64 {
        self.model.block_params() as f64
    }

    /// Weights of the blocks run plus the embeddings (and the head for the whole model).
    pub fn num_params(&self) -> f64 {
        let skipped = self.model.num_layers - self.blocks.min(self.model.num_layers);
        let head = if self.whole() {
            0
        } else {
            self.model.head_params()
        };
        (self.model.num_params() - skipped * self.model.block_params() - head) as f64
    }

    /// Trainable weights of one block.
    fn block_trainable_params(&self) -> f64 {
        match &self.trainable {
            Trainable::All => self.block_params(),
            _ => self.trainable_params() / self.blocks.max(1) as f64,
        }
    }

    /// Trainable weights: all of them, or the adapters' `r (d_in + d_out)` per target linear.
    pub fn trainable_params(&self) -> f64 {
        let d = self.model.dim() as f64;
        let f = self.model.ffn_dim as f64;
        match &self.trainable {
            Trainable::All => self.num_params(),
            Trainable::Frozen => 0.0,
            Trainable::Lora(l) => {
                let r = l.rank as f64;
                let per_block: f64 = l
                    .targets
                    .iter()
                    .map(|t| match t {
                        LoraTarget::SelfAttention | LoraTarget::CrossAttention => 4.0 * r * 2.0 * d,
                        LoraTarget::FeedForward => 2.0 * r * (d + f),
                    })
                    .sum();
                per_block * self.blocks as f64
            }
        }
    }

    fn whole(&self) -> bool {
        self.blocks >= self.model.num_layers
    }

    /// Bytes the forward keeps for the backward, over every block run (the moment the
    /// backward starts).
    pub fn saved_activations(&self) -> f64 {
        let kept = self.kept_bytes();
        kept.edges
            + (0..self.blocks)
                .map(|i| kept.block(self.checkpointing.selects(i)))
                .sum::<f64>()
    }

    /// What the forward keeps, in bytes: outside the blocks, and per block.
    fn kept_bytes(&self) -> KeptBytes {
        let a = self.activation_bytes as f64;
        let (rows, l, s) = (self.rows as f64, self.tokens as f64, self.text as f64);
        let d = self.model.dim() as f64;
        let per = self.block_floats();
        // embeddings: the patch embedding's output and the projected text (kept by the first
        // block and by every cross-attention); the head: its modulation and projection input
        let head = if self.whole() { 3.0 * d } else { 0.0 };
        KeptBytes {
            edges: rows * ((d + head) * l + 2.0 * d * s) * a,
            full_block: rows * (per.video * l + per.text * s) * a,
            input_only: rows * d * l * a,
        }
    }

    /// The step's terms (weights and optimiser state are resident; the rest lives during the
    /// step).
    pub fn plan(&self) -> MemoryPlan {
        let mut plan = MemoryPlan::default();
        let a = self.activation_bytes as f64;
        let (rows, l) = (self.rows as f64, self.tokens as f64);
        let d = self.model.dim() as f64;
        let f = self.model.ffn_dim as f64;
        let params = self.num_params();
        let trainable = self.trainable_params();
        let base_trains = matches!(self.trainable, Trainable::All);
        plan.push(
            "weights",
            params * self.weight_bytes as f64 + if base_trains { 0.0 } else { trainable * 4.0 },
            TermKind::Resident,
            format!(
                "{} weights x {} B{}",
                count(params),
                self.weight_bytes,
                if base_trains || trainable == 0.0 {
                    String::new()
                } else {
                    format!(" + {} adapter weights x 4 B", count(trainable))
                }
            ),
        );
        plan.push(
            "optimiser state",
            trainable * 4.0 * self.optimizer_states as f64,
            TermKind::Resident,
            format!(
                "{} f32 states x {} trainable",
                self.optimizer_states,
                count(trainable)
            ),
        );
        // The backward walks the blocks from the last: when it reaches block i, blocks 0..=i
        // still hold their activations and the gradients of blocks i.. (and of the head) have
        // been written. The peak is the largest of these moments.
        let per = self.block_floats();
        let block_grads = self.block_trainable_params() * 4.0;
        let head_grads = (trainable - block_grads / 4.0 * self.blocks as f64).max(0.0) * 4.0;
        let kept_bytes = self.kept_bytes();
        // the backward's transient gradients: the residual stream's, a branch's and the
        // feed-forward hidden's
        // (a checkpointed block's feed-forward hidden lives one chunk of tokens at a time)
        let chunk = ffn_chunk(None, self.rows, self.tokens, self.model.ffn_dim) as f64;
        let transients = |ckpt: bool| rows * (4.0 * d * l + f * if ckpt { chunk } else { l }) * a;
        // the attention's scores: on the tensor path one chunk of queries' at a time (the
        // probabilities and their gradients are updated in place; `ops::attention::recompute`),
        // in f32 whatever the activations' dtype; the CPU kernels keep two tiles per worker
        // thread
        let heads = self.model.num_attention_heads;
        let scores = match self.path {
            ActivationPath::CpuKernels => {
                (self.cpu_threads * cpu_scratch_bytes(self.tokens, self.tokens)) as f64
            }
            ActivationPath::TensorOps => {
                let chunk = query_chunk(self.rows, heads, self.tokens).min(self.tokens);
                (self.rows * heads * chunk * self.tokens * 4) as f64
            }
        } + if self.activation_bytes < 4 {
            // half precision: one group of heads' q, k, v, output and its gradient upcast to
            // f32, and f32 dq, dk, dv (`recompute::HALF_GROUP_VALUES` keys per group at most)
            let group = (self.rows * self.tokens * self.model.dim()).min(HALF_GROUP_VALUES);
            (8 * group * 4) as f64
        } else {
            0.0
        };

        let recompute = self.recompute_floats();
        let mut peak = (0.0, 0.0, 0.0, 0usize);
        let mut kept = kept_bytes.edges;
        for i in 0..self.blocks {
            let ckpt = self.checkpointing.selects(i);
            kept += kept_bytes.block(ckpt);
            let grads = head_grads + (self.blocks - i) as f64 * block_grads;
            let working = transients(ckpt) + scores + if ckpt { recompute * rows * a } else { 0.0 };
            if kept + grads + working > peak.0 + peak.1 + peak.2 {
                peak = (kept, grads, working, i);
            }
        }
        let (kept, grads, working, at) = peak;
        let checkpointed = (0..=at).filter(|&i| self.checkpointing.selects(i)).count();
        plan.push(
            "saved activations",
            kept,
            TermKind::Step,
            format!(
                "blocks 0..={at} at the peak: {} x {:.0} floats/token{} x {} tokens x {} rows",
                at + 1 - checkpointed,
                per.video,
                if checkpointed > 0 {
                    format!(" + {checkpointed} checkpointed x {d} (their input)")
                } else {
                    String::new()
                },
                self.tokens,
                self.rows,
            ),
        );
        plan.push(
            "gradients",
            grads,
            TermKind::Step,
            format!("f32, of blocks {at}.. and the head"),
        );
        let mut detail = "backward transients".to_string();
        if scores > 0.0 {
            detail.push_str(match self.path {
                ActivationPath::CpuKernels => " + the attention kernels' per-thread tiles",
                ActivationPath::TensorOps => " + one query chunk's attention scores",
            });
        }
        if self.checkpointing.selects(at) {
            detail.push_str(&format!(
                " + block {at}'s recompute ({:.0} floats/token)",
                recompute / l
            ));
        }
        plan.push("backward working set", working, TermKind::Step, detail);
        plan
    }
}

/// `1.419B`, `47.2M`, `3.1k`.
fn count(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.3}B", n / 1e9),
        n if n >= 1e6 => format!("{:.1}M", n / 1e6),
        n => format!("{:.1}k", n / 1e3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(trainable: Trainable, path: ActivationPath) -> DitStep {
        DitStep::new(WanConfig::tiny(), 32, 5, 2, trainable, path)
    }

    #[test]
    fn parameters_by_hand() {
        let step = tiny(Trainable::All, ActivationPath::CpuKernels);
        assert_eq!(step.num_params(), WanConfig::tiny().num_params() as f64);
        // tiny: width 24, feed-forward 48; a block: 8 linears 24x24 + biases, 2 RMS gains
        // each, the cross-attention layer norm, the two feed-forward linears, the table
        let block =
            2 * (4 * (24 * 24 + 24) + 2 * 24) + 2 * 24 + (24 * 48 + 48) + (48 * 24 + 24) + 6 * 24;
        assert_eq!(step.block_params(), block as f64);
        let trunk = DitStep {
            blocks: 1,
            ..step.clone()
        };
        let head = (24 * 4 * 4 + 4 * 4 + 2 * 24) as f64; // proj_out to 4 x (1x2x2) + table
        assert_eq!(trunk.num_params(), step.num_params() - block as f64 - head);
        // LoRA rank 2 on both attentions: 8 linears of r (24 + 24)
        let lora = LoraConfig::new(2)
            .with_targets(vec![LoraTarget::SelfAttention, LoraTarget::CrossAttention]);
        let adapted = tiny(Trainable::Lora(lora), ActivationPath::CpuKernels);
        assert_eq!(adapted.trainable_params(), (2 * 8 * 2 * 48) as f64);
        assert_eq!(
            tiny(Trainable::Frozen, ActivationPath::TensorOps).trainable_params(),
            0.0
        );
    }

    #[test]
    fn saved_activations_by_hand() {
        // CPU kernels, every weight trains: per video token 21 widths + 2 hidden + 2 heads'
        // log-sum-exp; per text token q-style keys (3 widths) and values
        let step = tiny(Trainable::All, ActivationPath::CpuKernels);
        let (d, f, h, l, s, rows) = (24.0, 48.0, 2.0, 32.0, 5.0, 2.0);
        let block = rows * (l * (21.0 * d + 2.0 * f + 2.0 * h) + s * 4.0 * d);
        let edges = rows * ((d + 3.0 * d) * l + 2.0 * d * s);
        assert_eq!(step.saved_activations(), 4.0 * (2.0 * block + edges));
        let checkpointed = DitStep {
            checkpointing: Checkpointing::EveryBlock,
            ..step.clone()
        };
        assert_eq!(
            checkpointed.saved_activations(),
            4.0 * (2.0 * rows * d * l + edges)
        );
        // the tensor path keeps more per block (layer-norm and GELU intermediates)
        let ops = tiny(Trainable::All, ActivationPath::TensorOps);
        assert!(ops.saved_activations() > step.saved_activations());
        // the plan's step terms at its peak never exceed what is alive at the backward's start
        // plus every gradient and the largest working set
        let plan = step.plan();
        assert!(plan.bytes(TermKind::Step) > step.saved_activations());
        assert_eq!(
            plan.bytes(TermKind::Resident),
            3.0 * 4.0 * step.num_params()
        );
    }

    #[test]
    fn checkpointing_lowers_the_planned_peak() {
        let mut step = DitStep::new(
            WanConfig::wan21_1_3b(),
            32_760,
            512,
            1,
            Trainable::Frozen,
            ActivationPath::TensorOps,
        );
        let plain = step.plan().bytes(TermKind::Step);
        step.checkpointing = Checkpointing::EveryBlock;
        let checkpointed = step.plan().bytes(TermKind::Step);
        assert!(checkpointed < plain / 4.0, "{checkpointed} vs {plain}");
    }
}
