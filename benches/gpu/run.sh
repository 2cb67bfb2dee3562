#!/usr/bin/env bash
# The GPU run, in one script:
#   (a) the DiT training step at Wan2.1-T2V-1.3B's width (1536, FFN 8960, 12 heads; 2 blocks) on
#       video-sized token counts, LoRA rank 64 on the attention with f32 and with bf16 (f16 on
#       wgpu) frozen weights, ours against the PyTorch twin (benches/reference/wan_train_step.py, diffusers)
#       on the same weights, same device, back to back;
#   (b) the peak device memory of a PRFL step (LoRA rank 64, every block checkpointed, f32
#       frozen weights unless PRECISION_B=bf16, the process reward on 2 blocks) on a Wan2.1-T2V-1.3B-shaped model (30
#       blocks, random weights) at growing resolutions up to 480p x 81 frames, against the
#       planner (latent_refl::plan).
#
#   benches/gpu/run.sh build       # here: release binaries with --features cuda, stripped, in
#                                  # .gpu/ (git-ignored), and the diffusers wheel in .gpu/whl
#   benches/gpu/run.sh run [DIR]   # on the GPU machine, from .gpu/: the tables into DIR/gpu.md
#                                  # (default out/gpu); the twin on cuda
#   benches/gpu/run.sh local [DIR] # here: the same steps on wgpu at small sizes (the twin on the
#                                  # CPU), into DIR/gpu.md (default out/gpu-local)
#
# Sizes: TOKENS_A (latent FxHxW list of (a)), LATENTS_B (of (b)), BLOCKS_B, REPS override them.
# Output lines of each run go to DIR/log.txt; gpu.md holds the two tables.
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:-}
bins=(train_step_bench)
case "$mode" in
  build)
    grep -qxF /.gpu/ .git/info/exclude || echo /.gpu/ >>.git/info/exclude
    cargo build --release -p experiments --features cuda --bin "${bins[@]}"
    mkdir -p .gpu/bin .gpu/whl
    for b in "${bins[@]}"; do
      strip -o ".gpu/bin/$b" "target/release/$b"
    done
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux2014_x86_64 --platform any \
      -d .gpu/whl diffusers==0.42.1 importlib_metadata==10.2.0 # the rest is on the machine
    du -sh .gpu
    exit 0
    ;;
  run)
    out=${2:-out/gpu}
    bin=.gpu/bin
    twin_device=cuda
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    a=${TOKENS_A:-"21x30x52 21x60x104"}
    b=${LATENTS_B:-"21x15x26 21x30x52 21x45x78 21x60x104"}
    blocks_b=${BLOCKS_B:-30}
    reps=${REPS:-3}
    half=bf16
    ;;
  local)
    out=${2:-out/gpu-local}
    # Mesa's lavapipe (apt-get install mesa-vulkan-drivers), as .ci/run sets it up
    export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp/latent-refl-xdg}
    mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
    lvp=$(ls /usr/share/vulkan/icd.d/lvp_icd.*.json 2>/dev/null | head -n 1 || true)
    [ -n "$lvp" ] && export VK_ICD_FILENAMES=${VK_ICD_FILENAMES:-$lvp}
    export CUBECL_AUTOTUNE_LEVEL=${CUBECL_AUTOTUNE_LEVEL:-minimal}
    cargo build --release -p experiments --features wgpu --bin "${bins[@]}"
    bin=target/release
    twin_device=cpu
    a=${TOKENS_A:-"1x8x16"}
    b=${LATENTS_B:-"1x8x8 1x8x16"}
    blocks_b=${BLOCKS_B:-2}
    reps=${REPS:-1}
    half=f16 # WGSL has no bf16
    ;;
  *)
    sed -n '2,20p' "$0"
    exit 2
    ;;
esac
# (b) in f32 by default: a random model is built in f32 before a cast, and the device pool
# keeps those pages, which would hide a half-precision step's own peak at the smaller sizes
b_precision=${PRECISION_B:-f32}
mkdir -p "$out"
log="$out/log.txt"
: >"$log"
field() { sed -nE "s/.*$1 ([0-9.]+) .*/\1/p" <<<"$2"; }
device=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
{
  echo "# GPU run: $(date -u +%Y-%m-%d), ${device:-no NVIDIA device} ($mode)"
  echo
  echo "## (a) DiT training step, Wan2.1-1.3B width, 2 blocks, batch 1, LoRA rank 64"
  echo
  echo "| latent | tokens | frozen weights | ours (ms) | PyTorch eager (ms) | ratio | ours, device peak above the model (MiB) | PyTorch, peak above the model (MiB) |"
  echo "|---|---|---|---|---|---|---|---|"
} >"$out/gpu.md"
for latent in $a; do
  for precision in f32 $half; do
    dir="$out/twin-$latent-$precision"
    ours=$("$bin/train_step_bench" --preset wan2.1-1.3b --blocks 2 --latent "$latent" \
      --batch 1 --reps "$reps" --lora 64 --precision "$precision" --export "$dir")
    echo "$ours" | tee -a "$log"
    theirs=$(PYTHONUNBUFFERED=1 python3 benches/reference/wan_train_step.py "$dir" \
      --device "$twin_device")
    echo "$theirs" | tee -a "$log"
    rm -f "$dir/weights.safetensors"
    tokens=$(sed -nE 's/.* ([0-9]+) tokens.*/\1/p' <<<"$ours")
    awk -v l="$latent" -v n="$tokens" -v p="$precision" -v o="$(field step "$ours")" \
      -v t="$(field step "$theirs")" -v om="$(sed -nE 's/.*MiB, ([0-9.]+) MiB above the loaded model.*/\1/p' <<<"$ours")" \
      -v tm="$(field training "$theirs")" \
      'BEGIN { printf "| %s | %s | %s | %.1f | %.1f | %.2f | %s | %s |\n", l, n, p, o, t, o / t, om, tm }' \
      >>"$out/gpu.md"
  done
done
{
  echo
  echo "## (b) PRFL step, Wan2.1-1.3B shape ($blocks_b blocks), LoRA rank 64, every block checkpointed, $b_precision frozen weights"
  echo
  echo "| latent | tokens | step (ms) | device peak (MiB) | planned (MiB) | planned / measured | device peak above the weights (MiB) | planned without the weights (MiB) | planned / measured |"
  echo "|---|---|---|---|---|---|---|---|---|"
} >>"$out/gpu.md"
for latent in $b; do
  ours=$("$bin/train_step_bench" --preset wan2.1-1.3b --blocks "$blocks_b" --latent "$latent" \
    --batch 1 --reps 1 --step prfl --start 1 --lora 64 --precision "$b_precision" \
    --checkpointing every_block)
  echo "$ours" | tee -a "$log"
  tokens=$(sed -nE 's/.* ([0-9]+) tokens.*/\1/p' <<<"$ours")
  peak=$(sed -nE 's/.*device peak ([0-9.]+) MiB.*/\1/p' <<<"$ours")
  above=$(sed -nE 's/.*MiB, ([0-9.]+) MiB above the loaded model.*/\1/p' <<<"$ours")
  planned=$(field planned "$ours")
  step_planned=$(sed -nE 's/.*MiB, ([0-9.]+) MiB without the weights.*/\1/p' <<<"$ours")
  awk -v l="$latent" -v n="$tokens" -v s="$(field step "$ours")" -v m="${peak:-0}" \
    -v p="$planned" -v a="${above:-0}" -v q="$step_planned" \
    'function r(x, y) { return y > 0 ? sprintf("%.2f", x / y) : "-" }
     BEGIN { printf "| %s | %s | %.0f | %.0f | %.0f | %s | %.0f | %.0f | %s |\n", l, n, s, m, p, r(p, m), a, q, r(q, a) }' \
    >>"$out/gpu.md"
done
cat "$out/gpu.md"
