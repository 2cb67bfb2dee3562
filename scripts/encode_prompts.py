"""Encodes prompts with the umT5 text encoder of a Wan2.1 diffusers folder, as diffusers'
`WanPipeline` does (512 tokens; embeddings zero past each prompt's attention mask), into one
safetensors file that `refl_trainer::PromptFile` loads. The text encoder stays out of the
training loop, as in the reference trainers, which cache these embeddings too.

    pip install torch transformers safetensors sentencepiece
    python scripts/encode_prompts.py --model Wan2.1-T2V-1.3B-Diffusers \
        --prompts my_prompts.txt --out out/prompts.safetensors

`--model` is the pipeline folder (with `text_encoder/` and `tokenizer/`). `--prompts` holds one
prompt per line (empty lines skipped). The file holds:
  embeddings        [N, S, D]   (bf16 by default; D = 4096 for umT5-XXL)
  lengths           [N]         int64, tokens under the attention mask
  negative          [1, S, D]   the negative prompt for classifier-free guidance (unless
  negative_length   [1]         `--negative ""`)
and, as metadata, `prompts` (a JSON list), `negative_prompt`, `max_length` and `text_encoder`.
"""

import argparse
import json
import os
import re

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, UMT5EncoderModel

# The negative prompt of Wan2.1's own sampling scripts and of diffusers' Wan examples.
WAN_NEGATIVE = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


def clean(text):
    """Whitespace clean-up of diffusers' `prompt_clean` (its ftfy step runs when ftfy is installed)."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    return re.sub(r"\s+", " ", text).strip()


@torch.no_grad()
def encode(prompts, tokenizer, encoder, max_length, device, batch):
    """`WanPipeline._get_t5_prompt_embeds`: embeddings [N, max_length, D] zero past each mask, and lengths."""
    out, lengths = [], []
    for i in range(0, len(prompts), batch):
        chunk = [clean(p) for p in prompts[i : i + batch]]
        tok = tokenizer(
            chunk,
            padding="max_length",
            max_length=max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        mask = tok.attention_mask
        seq = mask.gt(0).sum(dim=1).long()
        hidden = encoder(tok.input_ids.to(device), mask.to(device)).last_hidden_state.float().cpu()
        for h, n in zip(hidden, seq):
            padded = torch.zeros_like(h)
            padded[:n] = h[:n]
            out.append(padded)
        lengths.append(seq)
    return torch.stack(out), torch.cat(lengths)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="pipeline folder with text_encoder/ and tokenizer/")
    ap.add_argument("--prompts", required=True, help="text file, one prompt per line")
    ap.add_argument("--out", required=True, help="output .safetensors")
    ap.add_argument("--negative", default=WAN_NEGATIVE, help='negative prompt ("" for none)')
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)

    with open(args.prompts, encoding="utf-8") as f:
        prompts = [line.strip() for line in f if line.strip()]
    if not prompts:
        raise SystemExit(f"{args.prompts}: no prompts")
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(args.model, "tokenizer"))
    encoder = UMT5EncoderModel.from_pretrained(
        os.path.join(args.model, "text_encoder"), torch_dtype=torch.float32
    ).to(args.device).eval()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32

    emb, lengths = encode(prompts, tokenizer, encoder, args.max_length, args.device, args.batch)
    tensors = {"embeddings": emb.to(dtype).contiguous(), "lengths": lengths}
    if args.negative:
        neg, neg_len = encode([args.negative], tokenizer, encoder, args.max_length, args.device, 1)
        tensors["negative"] = neg.to(dtype).contiguous()
        tensors["negative_length"] = neg_len
    meta = {
        "prompts": json.dumps(prompts, ensure_ascii=False),
        "negative_prompt": args.negative,
        "max_length": str(args.max_length),
        "text_encoder": os.path.abspath(os.path.join(args.model, "text_encoder")),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_file(tensors, args.out, metadata=meta)
    print(f"{args.out}: {len(prompts)} prompts, embeddings {tuple(emb.shape)} {args.dtype}")


if __name__ == "__main__":
    main()
