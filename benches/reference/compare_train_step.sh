#!/usr/bin/env bash
# A training step of the Wan DiT, ours (burn, default CPU backend) against the PyTorch twin on the
# same weights, back to back on this machine, for every preset and step (flow: flow matching;
# prfl: PRFL's reward step); ours on one graph (`--shards 1`) and on one batch shard per core
# (the default). Prints a markdown table with the ratios. Needs Python with torch, diffusers and
# safetensors.
#   benches/reference/compare_train_step.sh [presets...]   (default: tiny shapes small wan)
#   STEPS="flow" benches/reference/compare_train_step.sh small
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet -p experiments --bin train_step_bench
presets=("${@:-tiny shapes small wan}")
steps=(${STEPS:-flow prfl})
echo "| preset | step | ours, 1 shard (ms) | ours, sharded (ms) | PyTorch (ms) | ratio 1 shard | ratio sharded | peak above loop start, ours 1 shard / sharded / PyTorch (MiB) | training peak above the loaded model, ours 1 shard / sharded / PyTorch (MiB) |"
echo "|---|---|---|---|---|---|---|---|---|"
ms() { sed -E 's/.*step ([0-9.]+) ms.*/\1/' <<<"$1"; }
mib() { sed -E 's/.*peak ([0-9.]+) MiB.*/\1/' <<<"$1"; }
train() { sed -E 's/.*training ([0-9.]+) MiB.*/\1/' <<<"$1"; }
for p in ${presets[@]}; do
  for s in "${steps[@]}"; do
    dir="out/twin/$p-$s"
    one=$(./target/release/train_step_bench --preset "$p" --step "$s" --shards 1 --export "$dir")
    many=$(./target/release/train_step_bench --preset "$p" --step "$s")
    theirs=$(python3 benches/reference/wan_train_step.py "$dir")
    awk -v p="$p" -v s="$s" -v a="$(ms "$one")" -v b="$(ms "$many")" -v t="$(ms "$theirs")" \
      -v c1="$(mib "$one")" -v c="$(mib "$many")" -v d="$(mib "$theirs")" \
      -v e1="$(train "$one")" -v e="$(train "$many")" -v g="$(train "$theirs")" \
      'BEGIN { printf "| %s | %s | %.1f | %.1f | %.1f | %.2f | %.2f | %.1f / %.1f / %.1f | %.1f / %.1f / %.1f |\n", p, s, a, b, t, a / t, b / t, c1, c, d, e1, e, g }'
  done
done
