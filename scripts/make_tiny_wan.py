"""Makes a tiny random Wan2.1 text-to-video pipeline folder in diffusers' layout (transformer
and VAE sharded and bf16, a tiny umT5 text encoder with its tokenizer, the UniPC scheduler) and
its cached prompt embeddings: the real-layout model that `examples/train.rs` runs in CI.

    pip install torch diffusers==0.42.1 transformers sentencepiece protobuf safetensors
    python scripts/make_tiny_wan.py --out assets/tiny-wan

The prompts are shapes-world captions, so the shapes-world oracle can score the decoded videos.
"""

import argparse
import os
import sys
import tempfile

import sentencepiece as spm
import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import encode_prompts  # noqa: E402

PROMPTS = [
    "a small red circle moving right slowly on a black background",
    "a large blue square moving left quickly on a navy background",
    "a small green triangle moving up slowly on a gray background",
    "a large yellow circle moving down quickly on a black background",
    "a small red square moving up quickly on a navy background",
    "a large blue triangle moving right slowly on a gray background",
    "a small green circle moving left quickly on a navy background",
    "a large yellow square staying still on a gray background",
]


def tokenizer(tmp):
    """A sentencepiece unigram model over the prompts, with T5's special ids (pad 0, eos 1, unk 2)."""
    corpus = os.path.join(tmp, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n".join(PROMPTS * 4 + [encode_prompts.WAN_NEGATIVE]))
    prefix = os.path.join(tmp, "spm")
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=prefix, vocab_size=112, model_type="unigram", hard_vocab_limit=False,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2,
    )
    return T5TokenizerFast(vocab_file=prefix + ".model", extra_ids=0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="assets/tiny-wan")
    ap.add_argument("--max-length", type=int, default=16)
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tok = tokenizer(tmp)
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=tok.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, feed_forward_proj="gated-gelu")
    ).eval()
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
        out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64,
    )
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
        latents_mean=[0.1, -0.2, 0.05, 0.0], latents_std=[1.2, 0.8, 1.0, 1.5],
    )
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = WanPipeline(tokenizer=tok, text_encoder=text_encoder, transformer=transformer, vae=vae, scheduler=scheduler)
    pipe.to(torch.bfloat16)
    pipe.save_pretrained(args.out, max_shard_size="40KB")
    with open(os.path.join(args.out, "prompts.txt"), "w") as f:
        f.write("\n".join(PROMPTS) + "\n")
    encode_prompts.main([
        "--model", args.out, "--prompts", os.path.join(args.out, "prompts.txt"),
        "--out", os.path.join(args.out, "prompts.safetensors"),
        "--max-length", str(args.max_length), "--dtype", "f32", "--device", "cpu",
    ])


if __name__ == "__main__":
    main()
