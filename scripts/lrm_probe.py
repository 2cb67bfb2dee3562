"""A PyTorch probe of how well the pixel oracle can be regressed from shapes-world latents.

Reads the reward data that `cargo run --release -p experiments --bin train_rewards` caches in
out/reward-data (training samples, their hard negatives, test and OOD samples) and fits a small
3D-conv network: four 3x3x3 convolutions (the third with stride (1, 2, 2)), each followed by FiLM
(scale and shift from the caption) and SiLU, then an MLP on the flattened [64, 5, 4, 4] features
(or, with --pool, on their mean) and the caption. The caption enters as one-hot attributes (or,
with --text bag-of-words, as word counts, where colour and background share their names), not
through the world's text encoder: the probe asks how much of the oracle the latents carry and
which architecture reads it, not how the text path should look. --width, --strides and
--groupnorm vary the convolutions.

    pip install torch numpy
    python3 scripts/lrm_probe.py               # flattened features
    python3 scripts/lrm_probe.py --pool        # mean-pooled features
    python3 scripts/lrm_probe.py --pool --groupnorm --strides 2,1,1,1   # downsample first

Prints the training loss and the Pearson correlation on train / test / OOD every 500 steps.
"""

import argparse
import json
import time

import numpy as np
import torch
import torch.nn as nn


def load(path):
    with open(path) as f:
        return json.load(f)["samples"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="out/reward-data")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--pool", action="store_true")
    ap.add_argument("--no-negatives", action="store_true")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--strides", default="1,1,2,1", help="spatial stride of each convolution")
    ap.add_argument("--groupnorm", action="store_true", help="GroupNorm(8) after each convolution")
    ap.add_argument("--text", choices=["one-hot", "bag-of-words"], default="one-hot")
    args = ap.parse_args()
    torch.manual_seed(0)
    d = args.data
    train = load(f"{d}/train_192x4_m0.05.json")
    negatives = [] if args.no_negatives else load(f"{d}/train_negatives_192x4_576.json")
    test = load(f"{d}/test_48x4_m0.05.json")
    ood = load(f"{d}/ood_48x4_m0.05.json")

    values = {}
    for s in train + negatives + test + ood:
        for k, v in s["caption"].items():
            values.setdefault(k, set()).add(v)
    values = {k: sorted(v) for k, v in values.items()}

    def caption_words(c):
        # the words of the caption's text: colour and background share their names, and a
        # still shape's speed is not said
        still = c["direction"] == "Still"
        return [c["size"], c["color"], c["shape"], c["direction"], c["background"]] + (
            [] if still else [c["speed"]]
        )

    words = sorted({w for s in train + negatives + test + ood for w in caption_words(s["caption"])})

    def encode(samples):
        z = torch.tensor(np.array([s["latent"] for s in samples], dtype=np.float32))
        z = z.reshape(-1, 16, 5, 8, 8)
        c = []
        for s in samples:
            if args.text == "one-hot":
                row = []
                for k in sorted(values):
                    one = [0.0] * len(values[k])
                    one[values[k].index(s["caption"][k])] = 1.0
                    row += one
            else:
                row = [0.0] * len(words)
                for w in caption_words(s["caption"]):
                    row[words.index(w)] += 1.0
            c.append(row)
        return z, torch.tensor(c), torch.tensor([s["reward"] for s in samples])

    z_fit, c_fit, y_fit = encode(train + negatives)
    sets = {"train": encode(train), "test": encode(test), "ood": encode(ood)}
    mu = z_fit.mean((0, 2, 3, 4), keepdim=True)
    sd = z_fit.std((0, 2, 3, 4), keepdim=True)
    width, text_dim = args.width, c_fit.shape[1]
    strides = [int(x) for x in args.strides.split(",")]
    grid = 8
    for st in strides:
        grid = (grid + st - 1) // st

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList(
                [
                    nn.Conv3d(16 if i == 0 else width, width, 3, padding=1, stride=(1, st, st))
                    for i, st in enumerate(strides)
                ]
            )
            norm = (lambda: nn.GroupNorm(8, width)) if args.groupnorm else nn.Identity
            self.norms = nn.ModuleList([norm() for _ in strides])
            self.film = nn.Linear(text_dim, len(strides) * 2 * width)
            feat = width if args.pool else width * 5 * grid * grid
            self.head = nn.Sequential(nn.Linear(feat + text_dim, 256), nn.SiLU(), nn.Linear(256, 1))

        def forward(self, z, c):
            h = (z - mu) / sd
            film = self.film(c).view(-1, len(strides), 2, width, 1, 1, 1)
            for i, conv in enumerate(self.convs):
                h = self.norms[i](conv(h))
                h = nn.functional.silu(h * (1 + film[:, i, 0]) + film[:, i, 1])
            h = h.mean((2, 3, 4)) if args.pool else h.flatten(1)
            return self.head(torch.cat([h, c], 1)).squeeze(1)

    model = Probe()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    t0 = time.time()

    def pearson():
        model.eval()
        out = {}
        with torch.no_grad():
            for k, (z, c, y) in sets.items():
                out[k] = round(float(np.corrcoef(model(z, c).numpy(), y.numpy())[0, 1]), 3)
        model.train()
        return out

    for i in range(args.steps):
        idx = torch.randint(0, len(y_fit), (32,))
        loss = ((model(z_fit[idx], c_fit[idx]) - y_fit[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (i + 1) % 500 == 0:
            print(i + 1, round(loss.item(), 4), pearson(), f"{time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
