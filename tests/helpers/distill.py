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
    if "dtype" in settings:  # the student's load dtype is a CLI (reference) flag, not DistillConfig's
        from tide_plugin.cli.reference_args import CliDistillConfig

        return CliDistillConfig(**settings)
    return DistillConfig(**settings)


def split_batch(batch: DistillBatch, idx: list[int]) -> DistillBatch:
    """Rows ``idx`` of a collated batch (views stay the leading dim of teacher_noisy_ids)."""
    sel = torch.tensor(idx)
    moved = {}
    for f in fields(batch):
        v = getattr(batch, f.name)
        if isinstance(v, torch.Tensor):
            moved[f.name] = v[:, sel] if f.name == "teacher_noisy_ids" else v[sel]
    if batch.chunk_active is not None:  # [b, C]: C is the split's own largest chunk count
        moved["chunk_active"] = moved["chunk_active"][:, : int(moved["num_chunks"].max())]
    return replace(batch, **moved)


def cross_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows of the ``cross`` pipeline over the tiny vocabulary: a prompt (label -100,
    partly chunked, so some chunks are never active), then a response of chunks of 1-3
    student and 1-3 teacher tokens; lengths and chunk counts vary from row to row."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        ids, labels, sch, tids, tch, c = [], [], [], [], [], 0
        for k in range(r.randint(1, 4)):
            ids.append(r.randrange(0, 60)), labels.append(-100), sch.append(c if k % 2 else -1)
            if k % 2:
                tids.append(r.randrange(0, 60)), tch.append(c)
                c += 1
        for _ in range(r.randint(2, 9)):
            for _ in range(r.randint(1, 3)):
                x = r.randrange(0, 60)
                ids.append(x), labels.append(x), sch.append(c)
            for _ in range(r.randint(1, 3)):
                tids.append(r.randrange(0, 60)), tch.append(c)
            c += 1
        out.append(dict(input_ids=ids, labels=labels, teacher_input_ids=tids, student_chunk_ids=sch,
                        teacher_chunk_ids=tch, num_chunks=c))
    return out


def shared_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows of the ``shared`` pipeline: the teacher wraps the same content in another
    template; pairs map the content tokens in order."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [r.randrange(0, 60) for _ in range(r.randint(1, 4))]
        resp = [r.randrange(0, 60) for _ in range(r.randint(3, 14))]
        p = len(prompt)
        out.append(dict(
            input_ids=[60] + prompt + [61] + resp,
            labels=[-100] * (p + 2) + resp,
            teacher_input_ids=[61, 60] + prompt + [60] + resp + [61],
            align_student=list(range(1, 1 + p)) + list(range(p + 2, p + 2 + len(resp))),
            align_teacher=list(range(2, 2 + p)) + list(range(p + 3, p + 3 + len(resp))),
        ))
    return out


ROWS = {"same": synthetic_rows, "shared": shared_rows, "cross": cross_rows}
OBJECTIVES = {"same": "kl+tidal", "shared": "kl_aligned+taid_aligned", "cross": "calm+tidal_calm"}
"""One run per unit: masked rows, template pairs, active chunks (each with CompDemo)."""


def normalisation_config(output_dir, pipeline: str, **overrides):
    """A tiny run of ``pipeline`` with a token or chunk objective and CompDemo."""
    settings = dict(pipeline=pipeline, objective=OBJECTIVES[pipeline], teacher_mask_token_id=MASK,
                    gradient_accumulation_steps=1, per_device_train_batch_size=4, max_steps=4)
    return tidal_comp_demo_config(output_dir, **{**settings, **overrides})


def window_gradient(trainer, model, batches: list[DistillBatch]) -> torch.Tensor:
    """The student gradient the Trainer's loop accumulates over one window of micro-batches
    (``get_batch_samples`` counts the window, ``training_step`` divides each micro-batch
    loss by the accumulation steps and backpropagates, through DDP when ``model`` is wrapped)."""
    model.zero_grad(set_to_none=True)
    samples = [{"distill_batch": b} for b in batches]
    trainer.get_batch_samples(iter(samples), len(samples), trainer.args.device)
    trainer.current_gradient_accumulation_steps = len(samples)
    for sample in samples:
        trainer.training_step(model, sample)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])


def three_chunk_batch(ids: torch.Tensor) -> DistillBatch:
    """A cross batch of two rows of six tokens with chunks ``[[0,0,1,2,2,-],[0,1,1,1,-,-]]``, some
    inactive, teacher ids equal to the student's: for objectives tested on hand-made logits."""
    b, length = ids.shape
    chunks = torch.tensor([[0, 0, 1, 2, 2, -1], [0, 1, 1, 1, -1, -1]])
    return DistillBatch(
        pipeline="cross", input_ids=ids, labels=ids, attention_mask=torch.ones(b, length, dtype=torch.bool),
        teacher_input_ids=ids, student_chunk_ids=chunks, teacher_chunk_ids=chunks, num_chunks=torch.tensor([3, 2]),
        chunk_active=torch.tensor([[True, False, True], [True, True, False]]),
    )
