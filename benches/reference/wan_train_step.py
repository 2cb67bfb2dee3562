"""PyTorch twin of `examples/train_step_bench.rs`: the flow-matching training step of diffusers'
WanTransformer3DModel (forward, loss, backward, AdamW update) on the weights and shapes that the
Rust example exported with `--export DIR`.

    pip install torch diffusers==0.42.1 safetensors
    python benches/reference/wan_train_step.py DIR [--threads 2] [--device cpu|cuda]

Prints the median step time and the peak resident memory above the start of the timed loop
(VmHWM - VmRSS from /proc/self/status after resetting the peak, as the Rust side measures it).
"""

import argparse
import json
import os
import time

import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file


def rss():
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.split()
    return int(fields["VmRSS"][0]) * 1024, int(fields["VmHWM"][0]) * 1024


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
    model.to(dev).train()
    x0 = torch.randn(bench["latent"], device=dev)
    eps = torch.randn(bench["latent"], device=dev)
    text = torch.randn(bench["text"], device=dev)
    b = x0.shape[0]
    sigma = torch.full((b,), bench["sigma"], device=dev)
    s5 = sigma.view(b, 1, 1, 1, 1)
    optim = torch.optim.AdamW(model.parameters(), lr=bench["lr"], weight_decay=0.01)

    def step():
        x_t = (1 - s5) * x0 + s5 * eps
        v = model(hidden_states=x_t, timestep=sigma * 1000, encoder_hidden_states=text, return_dict=False)[0]
        loss = ((v - (eps - x0)) ** 2).mean()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    start, _ = rss()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    times = []
    for _ in range(bench["reps"]):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1e3)
    _, peak = rss()
    times.sort()
    print(
        f"torch {torch.__version__} eager {args.device}, {args.threads} threads | "
        f"step {times[len(times) // 2]:.1f} ms (median of {len(times)}) | "
        f"peak {(peak - start) / 2**20:.1f} MiB above start"
    )


if __name__ == "__main__":
    main()
