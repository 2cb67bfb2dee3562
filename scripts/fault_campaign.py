#!/usr/bin/env python3
"""Faults tried from outside the process: the `train` and `quickstart` examples run on damaged
configs, model folders, prompt embeddings and checkpoints, and each run is classified.

    cargo build --example train --example quickstart
    python3 scripts/fault_campaign.py            # table on stdout, out/fault_campaign/report.json

Outcomes: `error` (a typed error, exit 1, nothing panicked), `ran` (exit 0 and every output
finite), and the failures: `panic`, `crash` (killed by a signal), `hang` (past the timeout),
`silent` (a fault that must be refused ran to the end), `corrupt` (non-finite output) and
`lost` (a checkpoint file changed or vanished). The script exits 1 when any run failed.
"""

import argparse
import hashlib
import json
import math
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

ASSETS = Path("assets/tiny-wan")
TEMPLATE = Path("examples/configs/tiny-wan-prfl.toml")
FAILURES = {"panic", "crash", "hang", "silent", "corrupt", "lost"}


def set_key(text, section, key, value):
    """`key = value` in `[section]` (added when missing)."""
    head = f"[{section}]\n"
    start = text.index(head) + len(head)
    end = text.find("\n[", start)
    end = len(text) if end < 0 else end + 1
    body = text[start:end]
    line = f"{key} = {value}\n"
    pattern = re.compile(rf"^{re.escape(key)} = .*\n", re.M)
    body = pattern.sub(line, body, count=1) if pattern.search(body) else line + body
    return text[:start] + body + text[end:]


def config_text(case_dir, steps=2):
    text = TEMPLATE.read_text()
    for part in ["transformer", "vae", "prompts.safetensors"]:
        local = case_dir / part
        source = local if local.exists() else ASSETS / part
        text = text.replace(f'"{ASSETS / part}"', json.dumps(str(source)))
    text = text.replace('"out/train/tiny-wan-prfl"', json.dumps(str(case_dir / "out")))
    return set_key(text, "learner", "steps", steps)


def copy_asset(case_dir, part):
    src, dst = ASSETS / part, case_dir / part
    (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return dst


def safetensors_header(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return data, n, json.loads(data[8 : 8 + n])


def write_header(path, data, n, header):
    """Rewrites the header, padded to its old length when it fits."""
    text = json.dumps(header, separators=(",", ":")).encode()
    if len(text) <= n:
        text += b" " * (n - len(text))
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n :])


def first_tensor(header):
    return next((k, v) for k, v in header.items() if k != "__metadata__")


NAN = {"F32": struct.pack("<I", 0x7FC00000), "BF16": b"\xc0\x7f", "F16": b"\x00\x7e"}


def put_nan(path):
    data, n, header = safetensors_header(path)
    t = next(v for k, v in header.items() if k != "__metadata__" and v["dtype"] in NAN)
    at = 8 + n + t["data_offsets"][0]
    path.write_bytes(data[:at] + NAN[t["dtype"]] + data[at + len(NAN[t["dtype"]]) :])


def values(path):
    """Every value of a safetensors file (F32, BF16, F16)."""
    data, n, header = safetensors_header(path)
    out = []
    for key, t in header.items():
        if key == "__metadata__":
            continue
        raw = data[8 + n + t["data_offsets"][0] : 8 + n + t["data_offsets"][1]]
        if t["dtype"] == "F32":
            out += struct.unpack(f"<{len(raw) // 4}f", raw)
        elif t["dtype"] == "BF16":
            out += [struct.unpack("<f", b"\0\0" + raw[i : i + 2])[0] for i in range(0, len(raw), 2)]
        elif t["dtype"] == "F16":
            out += struct.unpack(f"<{len(raw) // 2}e", raw)
    return out


def edit_header(part, fn):
    def setup(d):
        path = copy_asset(d, part)
        path = path / first_shard(path) if path.is_dir() else path
        data, n, header = safetensors_header(path)
        fn(header)
        write_header(path, data, n, header)

    return setup


def first_shard(folder):
    return sorted(p.name for p in folder.glob("*-00001-of-*.safetensors"))[0]


def mutate_bytes(part, fn, file=None):
    def setup(d):
        path = copy_asset(d, part)
        if path.is_dir():
            path = path / (file or first_shard(path))
        path.write_bytes(fn(path.read_bytes()))

    return setup


def flip(at):
    return lambda b: b[:at] + bytes([b[at] ^ 0x10]) + b[at + 1 :]


def config_edit(section, key, value):
    return lambda text: set_key(text, section, key, value)


def json_edit(part, fn):
    def setup(d):
        path = copy_asset(d, part) / "config.json"
        cfg = json.loads(path.read_text())
        fn(cfg)
        path.write_text(json.dumps(cfg))

    return setup


def cases():
    """(class, name, expected, setup of the case folder, edit of the config text, checkpoint
    damage, the same config run again over it). `expected` is `error` (must be refused) or `any`
    (refused or run cleanly)."""
    c = []
    add = lambda cls, name, exp="error", setup=None, edit=None, ck=None: c.append(
        (cls, name, exp, setup, edit, ck)
    )
    for key, value in [("lr", "1e30"), ("lr", "nan"), ("lr", "-1.0"), ("weight_decay", "inf"),
                       ("grad_clip", "0.0"), ("lr", '"fast"')]:
        add("run config", f"learner.optim.{key} = {value}", edit=config_edit("learner.optim", key, value))
    for section, key, value in [("learner", "steps", "0"), ("method", "batch", "100000"),
                                ("method", "batch", "0"), ("model", "heldout", "0"),
                                ("model", "video", "[4, 32, 32]"), ("model", "video", "[5, 31, 32]"),
                                ("model", "video", "[100001, 32, 32]"), ("method", "lambda", "nan"),
                                ("method.sampling", "steps", "0"), ("method", "window", "100"),
                                ("learner", "checkpoint_every", "-1"), ("lora", "rank", "0"),
                                ("learner.guard", "max_update_ratio", "0.0"), ("method", "bogus", "1"),
                                ("reward.process", "depth", "99"), ("reward.velr", "members", "0")]:
        add("run config", f"{section}.{key} = {value}", edit=config_edit(section, key, value))
    add("run config", "empty file", edit=lambda t: "")
    add("run config", "truncated", edit=lambda t: t[: len(t) // 2])
    add("run config", "invalid UTF-8", edit=lambda t: t.replace("prfl", "pr\udcffl"))
    add("run config", "missing transformer folder", edit=lambda t: t.replace("tiny-wan/transformer", "tiny-wan/nope"))

    for part in ["transformer", "vae"]:
        add(f"{part} config.json", "unknown key", setup=json_edit(part, lambda c: c.update(bogus=1)))
        add(f"{part} config.json", "wrong type", setup=json_edit(part, lambda c: c.update(
            {next(k for k, v in c.items() if isinstance(v, int) and not isinstance(v, bool)): "x"})))
        add(f"{part} config.json", "truncated", setup=mutate_bytes(part, lambda b: b[: len(b) // 2], "config.json"))
        add(f"{part} config.json", "invalid UTF-8", setup=mutate_bytes(part, lambda b: b"\xff" + b, "config.json"))
    add("transformer config.json", "num_layers = 0", setup=json_edit("transformer", lambda c: c.update(num_layers=0)))
    add("transformer config.json", "num_attention_heads = 3", setup=json_edit("transformer", lambda c: c.update(num_attention_heads=3)))
    add("transformer config.json", "patch_size = [0, 2, 2]", setup=json_edit("transformer", lambda c: c.update(patch_size=[0, 2, 2])))
    add("vae config.json", "z_dim = 0", setup=json_edit("vae", lambda c: c.update(z_dim=0)))
    add("vae config.json", "latents_std has a 0", setup=json_edit("vae", lambda c: c["latents_std"].__setitem__(0, 0.0)))

    for part in ["transformer", "vae", "prompts.safetensors"]:
        add(f"{part} weights", "truncated", setup=mutate_bytes(part, lambda b: b[: len(b) * 2 // 3]))
        add(f"{part} weights", "header bit flip", setup=mutate_bytes(part, flip(12)))
        add(f"{part} weights", "header length absurd", setup=mutate_bytes(part, lambda b: struct.pack("<Q", 1 << 60) + b[8:]))
        add(f"{part} weights", "a NaN value", setup=lambda d, p=part: put_nan(
            (lambda q: q / first_shard(q) if q.is_dir() else q)(copy_asset(d, p))))
        add(f"{part} weights", "wrong shape", setup=edit_header(part, lambda h: first_tensor(h)[1].update(
            shape=first_tensor(h)[1]["shape"][::-1] + [1])))
        add(f"{part} weights", "wrong dtype", setup=edit_header(part, lambda h: first_tensor(h)[1].update(dtype="I8")))
        add(f"{part} weights", "a tensor missing", setup=edit_header(part, lambda h: h.pop(first_tensor(h)[0])))
        add(f"{part} weights", "data bit flip (a changed weight)", "any",
            setup=mutate_bytes(part, lambda b: b[:-3] + bytes([b[-3] ^ 0x01]) + b[-2:]))
    add("transformer weights", "a shard missing", setup=lambda d: (copy_asset(d, "transformer") / first_shard(d / "transformer")).unlink())

    for name in ["state.json", "policy", "optim"]:
        add("checkpoint", f"{name}: truncated", ck=(name, lambda b: b[: len(b) // 2]))
        add("checkpoint", f"{name}: one bit flipped", ck=(name, flip(len(name) * 7)))
        add("checkpoint", f"{name}: invalid UTF-8 byte", ck=(name, lambda b: b"\xff" + b[1:]))
        add("checkpoint", f"{name}: deleted", ck=(name, None))
    add("checkpoint", "state.json: step = -1", ck=("state.json", lambda b: re.sub(rb'"step": \d+', b'"step": -1', b)))
    add("checkpoint", "state.json: step = 10^30", ck=("state.json", lambda b: re.sub(rb'"step": \d+', b'"step": 1e30', b)))
    return c


def finite_outputs(out):
    """Whether the run's adapter and metrics hold only finite numbers."""
    lora = out / "pytorch_lora_weights.safetensors"
    if not lora.exists() or not all(math.isfinite(v) for v in values(lora)):
        return False
    for line in (out / "metrics.jsonl").read_text().splitlines():
        loss = json.loads(line).get("loss")
        if loss is not None and not math.isfinite(loss):
            return False
    return True


def checkpoint_file(ck, name):
    return next(p for p in sorted(ck.iterdir()) if p.name.startswith(name))


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def run(cmd, timeout):
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout, text=True, errors="replace")
    except subprocess.TimeoutExpired:
        return None


def classify(p, expected):
    if p is None:
        return "hang", "past the timeout"
    last = (p.stderr.strip().splitlines() or [""])[-1][:160]
    if "panicked" in p.stderr or p.returncode == 101:
        return "panic", last
    if p.returncode < 0:
        return "crash", f"signal {-p.returncode}"
    if p.returncode != 0:
        return "error", last
    return ("silent" if expected == "error" else "ran"), ""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default="target/debug/examples", help="folder of the example binaries")
    ap.add_argument("--out", default="out/fault_campaign")
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args()
    train, quickstart = Path(args.bin) / "train", Path(args.bin) / "quickstart"
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    results = []
    for i, (cls, name, expected, setup, edit, ck) in enumerate(cases()):
        d = (root / f"case-{i:03}").resolve()
        d.mkdir(parents=True)
        if setup:
            setup(d)
        text = config_text(d)
        if ck:
            (d / "run.toml").write_text(text)
            first = run([str(train), "--config", str(d / "run.toml")], args.timeout)
            assert first is not None and first.returncode == 0, first and first.stderr
            folder = d / "out" / "checkpoint"
            target, damage = ck
            path = checkpoint_file(folder, target)
            if damage is None:
                path.unlink()
            else:
                path.write_bytes(damage(path.read_bytes()))
            before = digests(folder)
        if edit:
            text = edit(text)
        (d / "run.toml").write_bytes(text.encode("utf-8", "surrogateescape"))
        p = run([str(train), "--config", str(d / "run.toml")], args.timeout)
        outcome, detail = classify(p, expected)
        if outcome == "ran" and not finite_outputs(d / "out"):
            outcome = "corrupt"
        if ck and digests(folder) != before:
            outcome, detail = "lost", "the checkpoint changed"
        results.append({"class": cls, "case": name, "outcome": outcome, "detail": detail})
        print(f"{outcome:8} {cls:24} {name:40} {detail}", flush=True)

    for flag, value, expected in [("--lr", "1e30", "error"), ("--lr", "NaN", "error"),
                                  ("--kl", "inf", "error"), ("--lcb", "nan", "error"),
                                  ("--members", "0", "error"), ("--heldout", "0", "error"),
                                  ("--heldout", "100000", "any"), ("--steps", "0", "any"),
                                  ("--models", "assets/tiny-wan", "error")]:
        out = (root / f"quickstart{flag}-{value}").resolve()
        p = run([str(quickstart), flag, value, "--out", str(out)], args.timeout)
        outcome, detail = classify(p, expected)
        results.append({"class": "quickstart flags", "case": f"{flag} {value}", "outcome": outcome, "detail": detail})
        print(f"{outcome:8} {'quickstart flags':24} {flag + ' ' + value:40} {detail}", flush=True)

    world = Path("assets/shapes-world")
    for folder, file, damage in [("models", "vae.mpk", "one data bit flipped"),
                                 ("models", "text.mpk", "truncated"),
                                 ("models", "dit.safetensors", "one data bit flipped"),
                                 ("rewards", "velr_0.mpk", "one data bit flipped")]:
        d = (root / f"world-{file}-{damage.split()[0]}").resolve()
        shutil.copytree(world, d / "models")
        shutil.move(d / "models" / "rewards", d / "rewards")
        path = d / folder / file
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if damage == "truncated" else flip(len(data) - 5)(data))
        p = run([str(quickstart), "--steps", "1", "--heldout", "1", "--models", str(d / "models"),
                 "--rewards", str(d / "rewards"), "--out", str(d / "out")], args.timeout)
        outcome, detail = classify(p, "error")
        results.append({"class": "shipped world models", "case": f"{file}: {damage}", "outcome": outcome, "detail": detail})
        print(f"{outcome:8} {'shipped world models':24} {file + ': ' + damage:40} {detail}", flush=True)

    counts = {}
    for r in results:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    print(f"\n{len(results)} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    (root / "report.json").write_text(json.dumps({"counts": counts, "results": results}, indent=1))
    sys.exit(1 if FAILURES & counts.keys() else 0)


if __name__ == "__main__":
    main()
