"""Shared helpers of the trainer tests: synthetic rows over a tiny vocabulary (the
``same`` pipeline, no tokenizer needed) and tiny models."""

from __future__ import annotations

import random
from dataclasses import fields, replace

import torch

from tide_plugin.batch import DistillBatch

V, MASK, EOS = 64, 63, 62


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    r = random.Random(seed)
    out = []
    for _ in range(n):
        length, prompt = r.randint(6, 20), r.randint(1, 4)
        ids = [r.randrange(0, 60) for _ in range(length)]
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def tidal_comp_demo_config(output_dir, **overrides):
    """The tiny token-TIDAL + CompDemo run (``same`` pipeline) that the resume and the
    multi-process tests train; ``overrides`` set what each test varies."""
    from tide_plugin.training import DistillConfig

    settings = dict(
        output_dir=str(output_dir),
        objective="tidal",
        pipeline="same",
        shared_vocab_size=V,
        use_comp_demo=True,
        block_size=4,
        gradient_accumulation_steps=2,
        logging_steps=1,
        learning_rate=1e-3,
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_pin_memory=False,
        seed=0,
    )
    settings.update(overrides)
    return DistillConfig(**settings)


def split_batch(batch: DistillBatch, idx: list[int]) -> DistillBatch:
    """Rows ``idx`` of a collated batch (views stay the leading dim of teacher_noisy_ids)."""
    sel = torch.tensor(idx)
    moved = {}
    for f in fields(batch):
        v = getattr(batch, f.name)
        if isinstance(v, torch.Tensor):
            moved[f.name] = v[:, sel] if f.name == "teacher_noisy_ids" else v[sel]
    return replace(batch, **moved)
