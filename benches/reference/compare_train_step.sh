#!/usr/bin/env bash
# The flow-matching training step of the Wan DiT, ours (burn, default CPU backend) against the
# PyTorch twin on the same weights, back to back on this machine, for every preset; prints a
# markdown table with the ratios. Needs Python with torch, diffusers and safetensors.
#   benches/reference/compare_train_step.sh [presets...]   (default: tiny shapes small)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet --example train_step_bench
presets=("${@:-tiny shapes small}")
echo "| preset | ours (ms) | PyTorch (ms) | time ratio | ours peak (MiB) | PyTorch peak (MiB) |"
echo "|---|---|---|---|---|---|"
for p in ${presets[@]}; do
  dir="out/twin/$p"
  ours=$(./target/release/examples/train_step_bench --preset "$p" --export "$dir")
  theirs=$(python3 benches/reference/wan_train_step.py "$dir")
  ms() { sed -E 's/.*step ([0-9.]+) ms.*/\1/' <<<"$1"; }
  mib() { sed -E 's/.*peak ([0-9.]+) MiB.*/\1/' <<<"$1"; }
  awk -v p="$p" -v a="$(ms "$ours")" -v b="$(ms "$theirs")" -v c="$(mib "$ours")" -v d="$(mib "$theirs")" \
    'BEGIN { printf "| %s | %.1f | %.1f | %.2f | %.1f | %.1f |\n", p, a, b, a / b, c, d }'
done
