"""Checks `examples/wan_io.rs` against diffusers on a Wan2.1 pipeline folder: the transformer's
forward (optionally with a LoRA adapter loaded by diffusers' `load_lora_adapter`), the VAE's
posterior mean and its decoding, on random inputs. Prints the relative errors; exits 1 above
`--tol`.

    cargo build --release --example wan_io
    python scripts/check_wan_io.py --pipeline assets/tiny-wan [--lora out/train/pytorch_lora_weights.safetensors]

The real Wan2.1-T2V-1.3B-Diffusers folder works the same way (`--frames 5 --size 64` keeps it quick).
"""

import argparse
import os
import subprocess
import sys
import tempfile

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors.torch import load_file, save_file


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def run(binary, args):
    subprocess.run([binary] + args, check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipeline", required=True, help="folder with transformer/ and vae/")
    ap.add_argument("--lora", help="adapter file to load in both")
    ap.add_argument("--binary", default="target/release/examples/wan_io")
    ap.add_argument("--frames", type=int, default=5, help="video frames (1 + 4k)")
    ap.add_argument("--size", type=int, default=32, help="video height and width (multiple of 16)")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    torch.manual_seed(0)
    transformer = WanTransformer3DModel.from_pretrained(
        os.path.join(args.pipeline, "transformer"), torch_dtype=torch.float32).eval()
    vae = AutoencoderKLWan.from_pretrained(os.path.join(args.pipeline, "vae"), torch_dtype=torch.float32).eval()
    cfg = transformer.config
    lf, ls = 1 + (args.frames - 1) // 4, args.size // 8
    latents = torch.randn(2, cfg.in_channels, lf, ls, ls)
    timestep = torch.tensor([900.0, 310.5])
    text = torch.randn(2, 9, cfg.text_dim)
    video = torch.rand(1, 3, args.frames, args.size, args.size) * 2 - 1
    z = torch.randn(1, vae.config.z_dim, lf, ls, ls)
    errors = {}
    with tempfile.TemporaryDirectory() as tmp:
        p = lambda n: os.path.join(tmp, n)
        save_file({"latents": latents, "timestep": timestep, "encoder_hidden_states": text}, p("t_in"))
        save_file({"video": video}, p("e_in"))
        save_file({"latents": z}, p("d_in"))
        extra = ["--lora", args.lora] if args.lora else []
        run(args.binary, ["transformer", "--model", os.path.join(args.pipeline, "transformer"),
                          "--inputs", p("t_in"), "--output", p("t_out")] + extra)
        run(args.binary, ["vae-encode", "--model", os.path.join(args.pipeline, "vae"),
                          "--inputs", p("e_in"), "--output", p("e_out")])
        run(args.binary, ["vae-decode", "--model", os.path.join(args.pipeline, "vae"),
                          "--inputs", p("d_in"), "--output", p("d_out")])
        if args.lora:
            transformer.load_lora_adapter(args.lora, prefix="transformer")
        with torch.no_grad():
            want = transformer(latents, timestep, text, return_dict=False)[0]
            errors["transformer" + (" + LoRA" if args.lora else "")] = rel(load_file(p("t_out"))["velocity"], want)
            errors["vae encode (posterior mean)"] = rel(
                load_file(p("e_out"))["latent_mean"], vae.encode(video).latent_dist.mean)
            errors["vae decode"] = rel(load_file(p("d_out"))["video"], vae.decode(z).sample)
        if args.lora:
            transformer.disable_lora()
            with torch.no_grad():
                base = transformer(latents, timestep, text, return_dict=False)[0]
            errors["(the adapter's own effect)"] = rel(base, want)
    for name, e in errors.items():
        print(f"{name:<32} relative error {e:.2e}")
    bad = [n for n, e in errors.items() if not n.startswith("(") and e > args.tol]
    if bad:
        sys.exit(f"above {args.tol}: {', '.join(bad)}")


if __name__ == "__main__":
    main()
