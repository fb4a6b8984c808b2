"""Train a small byte-level BD3LM student on Python standard-library source, for
``bench/sampling.py``'s speed/quality table (decoders need a trained student:
a random one's confidences say nothing about when to commit several tokens).

The corpus is the running interpreter's standard library (``sysconfig``'s
``stdlib`` folder: real, fixed text on every machine). Files are split by a hash
of their relative path: about 1 in 10 is held out (never trained on) and
``bench/sampling.py`` draws its prompts from those. Tokens are UTF-8 bytes
(ids 0-255), with ``[MASK]`` = 256 and EOS = 257, so nothing depends on a
tokenizer download and quality is measured in bytes.

Training is the project's BD3LM objective (docs/method.md#student-forward) through its core:
``tide_plugin.bd3lm.block_diffusion_logits`` (x_t ⊕ x0 forward with the
block-diffusion mask) and ``bd3lm_ce`` (CE on masked positions, ELBO weight
1/t for the linear schedule), with AdamW in a plain loop: a CE-only student
needs no teacher, and the distillation trainer always builds one.

    python bench/train_sampling_student.py --out runs/sampling_student --minutes 15          # CPU
    python bench/train_sampling_student.py --out /tmp/student --minutes 1 --preset qwen3-0.6b-body --device cuda

(``--preset qwen3-0.6b-body``: Qwen3-0.6B's transformer body - hidden 1024, 28
layers, 16/8 heads of 128, MLP 3072 - with the 258-byte vocabulary, trained in
bfloat16 autocast; its calls cost what a Qwen3-0.6B student's cost at batch 1,
and its confidences are a trained model's.)

writes a ``save_pretrained`` folder with ``tide_config.json`` (mask id, block size)
and ``train_log.json`` (seed, steps, losses, held-out files).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import sysconfig
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tide_plugin.bd3lm import bd3lm_ce, block_diffusion_logits  # noqa: E402
from tide_plugin.tiny import tiny_qwen3  # noqa: E402

MASK_ID, EOS_ID, VOCAB = 256, 257, 258


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("test", "idlelib", "site-packages", "lib2to3", "tkinter", "turtledemo", "ensurepip")
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts and rel.parts[0] in skip:
            continue
        files.append(path)
    return files


def held_out(path: Path) -> bool:
    """About one file in ten, fixed by the file's path relative to the stdlib root."""
    rel = str(path.relative_to(Path(sysconfig.get_paths()["stdlib"])))
    return hashlib.sha256(rel.encode()).digest()[0] % 10 == 0


def corpus(train: bool) -> bytes:
    parts = []
    for path in stdlib_files():
        if held_out(path) != train:
            try:
                parts.append(path.read_bytes())
            except OSError:
                continue
    return b"\n".join(parts)


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    if args.preset == "small":
        return tiny_qwen3(VOCAB, hidden_size=args.hidden, num_layers=args.layers, num_heads=4, num_kv_heads=2,
                          seed=args.seed)
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=VOCAB, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                         num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=4096,
                         tie_word_embeddings=True, attn_implementation="sdpa")
    torch.manual_seed(args.seed)
    return Qwen3ForCausalLM(config)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/sampling_student")
    parser.add_argument("--minutes", type=float, default=6.0, help="wall-clock training budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--length", type=int, default=64, help="training window (a multiple of --block-size)")
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=None, help="default 2e-3 (small), 3e-4 (qwen3-0.6b-body)")
    parser.add_argument("--threads", type=int, default=1, help="1 avoids OpenMP spinning on a shared machine")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", choices=["small", "qwen3-0.6b-body"], default="small")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.lr is None:
        args.lr = 2e-3 if args.preset == "small" else 3e-4
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"--out {str(out)!r} exists and is not empty; pick another folder or remove it")

    text = corpus(train=True)
    if len(text) < 1_000_000:
        raise SystemExit(f"the standard library at {sysconfig.get_paths()['stdlib']} gave only {len(text):,} bytes "
                         "of .py source; this interpreter ships no sources to train on")
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    print(f"train corpus: {len(data):,} bytes from the standard library of Python {sys.version.split()[0]}")
    model = build_model(args).to(args.device)
    model.config.mask_token_id, model.config.eos_token_id = MASK_ID, EOS_ID
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    g = torch.Generator().manual_seed(args.seed)
    budget = args.minutes * 60
    start, step, losses = time.perf_counter(), 0, []
    warmup = 50
    while time.perf_counter() - start < budget:
        frac = (time.perf_counter() - start) / budget
        lr = args.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        for group in opt.param_groups:
            group["lr"] = lr
        offsets = torch.randint(0, len(data) - args.length, (args.batch,), generator=g)
        x0 = torch.stack([data[o : o + args.length] for o in offsets.tolist()])
        t = torch.rand(args.batch, 1, generator=g) * (1 - 1e-3) + 1e-3
        masked = torch.rand(x0.shape, generator=g) < t
        xt = x0.masked_fill(masked, MASK_ID)
        x0, xt, masked, t = x0.to(args.device), xt.to(args.device), masked.to(args.device), t.to(args.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.device.startswith("cuda")):
            logits = block_diffusion_logits(model, xt, x0, block_size=args.block_size)
        loss = bd3lm_ce(logits, x0, masked=masked, maskable=torch.ones_like(masked), weight=1.0 / t.squeeze(1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 100 == 0:
            recent = sum(losses[-100:]) / 100
            print(f"step {step}  loss {recent:.3f} nats/byte (ELBO)  {time.perf_counter() - start:.0f} s", flush=True)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    (out / "tide_config.json").write_text(json.dumps({"mask_token_id": MASK_ID, "block_size": args.block_size}))
    log = {"seed": args.seed, "steps": step, "minutes": args.minutes, "python": sys.version.split()[0],
           "final_loss_100": sum(losses[-100:]) / max(1, len(losses[-100:])), "args": vars(args),
           "tokens": "utf-8 bytes; mask 256, eos 257",
           "held_out_files": [str(p) for p in stdlib_files() if held_out(p)]}
    (out / "train_log.json").write_text(json.dumps(log, indent=1))
    print(f"saved {out} after {step} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
