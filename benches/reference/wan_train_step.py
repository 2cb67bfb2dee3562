"""PyTorch twin of `experiments/src/bin/train_step_bench.rs`: a training step of diffusers'
WanTransformer3DModel on the weights and shapes that the Rust example exported with `--export DIR`
(`bench.json` names the step):

- `flow`: the flow-matching step (forward, loss, backward, AdamW update);
- `prfl`: PRFL's reward step: a no-grad Euler rollout of `start` of `steps` steps (diffusers'
  FlowMatchEulerDiscreteScheduler sigmas with the same shift) from noise, one step with
  gradients, the process reward model on the noisy latent at its timestep, `lambda * relu(margin
  - r)`, backward, AdamW on the policy. The reward model is built as ours is: the policy's patch
  and condition embeddings and first `depth` blocks (copied at the start, frozen in this step), a
  learnable query attending over the tokens (torch's MultiheadAttention, query added back) and an
  MLP head with a sigmoid. Its pool and head are freshly initialised here (their values do not
  change the cost).

With `"lora": RANK` in `bench.json` the base weights are frozen and LoRA adapters (f32, `B = 0`)
on the self- and cross-attention projections train; `"precision": "bf16"` (or `"f16"`) stores
and computes the frozen weights in half precision (the adapters, the reward's pool and head and
the loss stay f32), as `WanTransformer::with_frozen_precision` does on the Rust side.

    pip install torch diffusers==0.42.1 safetensors
    python benches/reference/wan_train_step.py DIR [--threads 2] [--device cpu|cuda]

Prints the median step time and two peaks of resident memory (VmHWM from /proc/self/status after
resetting it, as the Rust side measures them): above the start of the timed loop, and above the
loaded model, from before the warm-up step (the training's whole working set: optimiser state,
gradients, activations and what the allocator keeps). PyTorch keeps the last step's gradients
until the next `zero_grad`, so the first figure leaves them out on this side only. On CUDA the
peaks are the caching allocator's (`torch.cuda.max_memory_allocated`), above the same points.
"""

import argparse
import copy
import json
import os
import time

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from safetensors.torch import load_file


class LoraLinear(torch.nn.Module):
    """`base(x) + (x A) B` with f32 adapters (PEFT's init: Kaiming-uniform `A`, zero `B`)."""

    def __init__(self, base, rank):
        super().__init__()
        self.base = base
        dev = base.weight.device
        self.down = torch.nn.Parameter(torch.empty(rank, base.in_features, device=dev))
        torch.nn.init.kaiming_uniform_(self.down, a=5**0.5)
        self.up = torch.nn.Parameter(torch.zeros(base.out_features, rank, device=dev))

    def forward(self, x):
        y = self.base(x)
        z = torch.nn.functional.linear(torch.nn.functional.linear(x.float(), self.down), self.up)
        return y + z.to(y.dtype)


def add_lora(model, rank):
    for block in model.blocks:
        for attn in (block.attn1, block.attn2):
            for name in ("to_q", "to_k", "to_v"):
                setattr(attn, name, LoraLinear(getattr(attn, name), rank))
            attn.to_out[0] = LoraLinear(attn.to_out[0], rank)


def rss():
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.split()
    return int(fields["VmRSS"][0]) * 1024, int(fields["VmHWM"][0]) * 1024


class ProcessReward(torch.nn.Module):
    """PRFL's process reward model on a copy of the DiT's embeddings and first `depth` blocks."""

    def __init__(self, dit, depth, pool_heads, head):
        super().__init__()
        self.dit = copy.deepcopy(dit)
        self.dit.blocks = self.dit.blocks[:depth]
        d = dit.config.num_attention_heads * dit.config.attention_head_dim
        self.query = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(1, 1, d)))
        self.pool = torch.nn.MultiheadAttention(d, pool_heads, batch_first=True)
        widths = [d, *head, 1]
        layers = []
        for i in range(len(widths) - 1):
            layers.append(torch.nn.Linear(widths[i], widths[i + 1]))
            if i + 2 < len(widths):
                layers.append(torch.nn.ReLU())
        self.head = torch.nn.Sequential(*layers)

    def forward(self, x, timestep, text):
        # WanTransformer3DModel.forward up to the end of the block loop
        m = self.dit
        rotary = m.rope(x)
        h = m.patch_embedding(x).flatten(2).transpose(1, 2).contiguous()
        _, proj, text, _ = m.condition_embedder(timestep, text, None)
        proj = proj.unflatten(1, (6, -1))
        for block in m.blocks:
            h = block(h, text, proj, rotary)
        h = h.float()
        q = self.query.expand(h.shape[0], -1, -1)
        pooled = (self.pool(q, h, h, need_weights=False)[0] + q).squeeze(1)
        return torch.sigmoid(self.head(pooled).squeeze(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with open(os.path.join(args.dir, "config.json")) as f:
        cfg = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    cfg["patch_size"] = tuple(cfg["patch_size"])
    with open(os.path.join(args.dir, "bench.json")) as f:
        bench = json.load(f)
    dev = torch.device(args.device)
    model = WanTransformer3DModel(**cfg).float()
    model.load_state_dict(load_file(os.path.join(args.dir, "weights.safetensors")), strict=True)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[
        bench.get("precision", "f32")
    ]
    rank = bench.get("lora")
    if rank:
        model.requires_grad_(False)
    if dtype != torch.float32:
        model.to(dtype)
        # what from_pretrained(torch_dtype=...) keeps in f32 (time embedder, norms, tables)
        keep = getattr(model, "_keep_in_fp32_modules", None) or []
        for name, module in model.named_modules():
            if any(k in name.split(".") for k in keep):
                module.float()
    model.to(dev).train()
    x0 = torch.randn(bench["latent"], device=dev)
    eps = torch.randn(bench["latent"], device=dev)
    text = torch.randn(bench["text"], device=dev)
    b = x0.shape[0]
    sigma = torch.full((b,), bench["sigma"], device=dev)
    s5 = sigma.view(b, 1, 1, 1, 1)
    kind = bench.get("step", "flow")
    if kind == "prfl":
        p = bench["prfl"]
        prm = ProcessReward(model, p["depth"], p["pool_heads"], p["head"]).to(dev)
        prm.requires_grad_(False)
    if rank:
        add_lora(model, rank)
    if bench.get("checkpointing"):
        model.enable_gradient_checkpointing()
    trainable = [q for q in model.parameters() if q.requires_grad]
    optim = torch.optim.AdamW(trainable, lr=bench["lr"], weight_decay=0.01)
    if kind == "prfl":
        sched = FlowMatchEulerDiscreteScheduler(shift=p["shift"])
        sched.set_timesteps(p["steps"])
        sigmas = sched.sigmas.tolist()

    def run(x, t):
        out = model(
            hidden_states=x.to(dtype),
            timestep=t,
            encoder_hidden_states=text.to(dtype),
            return_dict=False,
        )[0]
        return out.float()

    def velocity(x, s):
        return run(x, torch.full((b,), s * 1000, device=dev))

    def loss_fn():
        if kind == "flow":
            x_t = (1 - s5) * x0 + s5 * eps
            v = run(x_t, sigma * 1000)
            return ((v - (eps - x0)) ** 2).mean()
        start = p["start"]
        z = eps
        with torch.no_grad():
            for i in range(start):
                z = z + (sigmas[i + 1] - sigmas[i]) * velocity(z, sigmas[i])
        z = z + (sigmas[start + 1] - sigmas[start]) * velocity(z, sigmas[start])
        r = prm(z.to(dtype), torch.full((b,), sigmas[start + 1] * 1000, device=dev), text.to(dtype))
        return p["lambda"] * torch.relu(p["margin"] - r).mean()

    def step():
        loss = loss_fn()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    cuda = dev.type == "cuda"

    def memory():
        if cuda:
            return torch.cuda.memory_allocated(dev), torch.cuda.max_memory_allocated(dev)
        return rss()

    def reset_peak():
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    loaded, _ = memory()
    reset_peak()
    step()  # warm-up
    start, warm_peak = memory()
    reset_peak()
    times = []
    for _ in range(bench["reps"]):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1e3)
    _, peak = memory()
    training = max(peak, warm_peak) - loaded
    times.sort()
    print(
        f"torch {torch.__version__} eager {args.device}, {args.threads} threads | {kind} step "
        f"{bench.get('precision', 'f32')}{f' LoRA {rank}' if rank else ''} | "
        f"step {times[len(times) // 2]:.1f} ms (median of {len(times)}) | "
        f"peak {(peak - start) / 2**20:.1f} MiB above start | "
        f"training {training / 2**20:.1f} MiB above the loaded model"
    )


if __name__ == "__main__":
    main()
