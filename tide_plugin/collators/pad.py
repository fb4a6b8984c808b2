"""``distill_pad``: the first collator stage. Dataset rows -> :class:`DistillBatch`.

Per example (SPEC 1.1): optional truncation to ``max_length`` (dropping the
chunks / pairs that cross the cut, and cutting the teacher after the last kept
chunk / pair), then block-EOS padding: ids and labels are padded with the
student EOS up to a multiple of ``block_size``; the EOS padding is a target.
Per batch: every example is padded to the longest one (rounded up to
``pad_to_multiple``) with ``pad_id``, labels ``-100`` and ``attention_mask``
False. The teacher side is padded with ``teacher_pad_id`` and gets its own
``teacher_attention_mask``.

Output shapes (``b`` examples, ``L`` a multiple of ``block_size``)::

    input_ids, labels            [b, L]    long
    attention_mask               [b, L]    bool (block-EOS padding is True)
    teacher_input_ids            [b, L_T]  long (shared / cross; None for same)
    teacher_attention_mask       [b, L_T]  bool
    student_chunk_ids            [b, L]    long, -1 = no chunk   (cross)
    teacher_chunk_ids            [b, L_T]  long, -1 = no chunk   (cross)
    num_chunks                   [b]       long                  (cross)
    pair_student, pair_teacher   [b, P]    long, 0 where pair_mask is False (shared)
    pair_mask                    [b, P]    bool                  (shared)

``batch.stats`` counts what the stage changed: ``truncated_examples``,
``truncated_teacher_examples``, ``dropped_chunks`` (chunks cut by truncation),
``dropped_pairs`` (pairs cut by truncation), ``mismatched_pairs`` (pairs whose
student and teacher ids differ: dropped, SPEC 3.2), ``block_pad_tokens``,
``batch_pad_tokens``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..batch import (
    ROW_LABELS,
    ROW_NUM_CHUNKS,
    ROW_PAIR_STUDENT,
    ROW_PAIR_TEACHER,
    ROW_STUDENT_CHUNKS,
    ROW_STUDENT_IDS,
    ROW_TEACHER_CHUNKS,
    ROW_TEACHER_IDS,
    DistillBatch,
    Pipeline,
)
from ..hookspecs import PluginSpec, hookimpl

PIPELINES: tuple[str, ...] = ("same", "shared", "cross")
IGNORE_INDEX = -100


def _positive_or_none(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


@dataclass
class DistillPadConfig:
    """Configuration of ``distill_pad``.

    :param eos_id: student EOS id used for block padding (required).
    :param pipeline: ``same`` | ``shared`` | ``cross``; ``None`` infers it from
        the row keys (chunk ids -> cross, pairs -> shared, no teacher ids -> same).
    :param block_size: BD3LM block size ``B`` (SPEC default 32).
    :param pad_id: student id for batch padding beyond the block padding
        (default: ``eos_id``); these positions have ``attention_mask`` False and
        labels -100, so the value only has to be a valid id.
    :param teacher_pad_id: teacher id for teacher batch padding (pad keys are
        blocked by the teacher adapter, so any valid teacher id works).
    :param pad_to_multiple: round the batch length ``L`` up to a multiple of this
        (and of ``block_size``).
    :param teacher_pad_to_multiple: the same for ``L_T``.
    :param max_length: truncate student examples to this many tokens before block
        padding (must be a multiple of ``block_size``).
    :param teacher_max_length: truncate teacher examples to this many tokens.
    """

    eos_id: int | None = None
    pipeline: Literal["same", "shared", "cross"] | None = None
    block_size: int = 32
    pad_id: int | None = None
    teacher_pad_id: int = 0
    pad_to_multiple: int | None = None
    teacher_pad_to_multiple: int | None = None
    max_length: int | None = None
    teacher_max_length: int | None = None

    def __post_init__(self) -> None:
        if self.eos_id is None:
            raise ValueError(
                "distill_pad needs eos_id (the student tokenizer's EOS id, used for block-EOS padding, SPEC 1.1); "
                "got None"
            )
        for name in ("eos_id", "teacher_pad_id"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be a non-negative int, got {v!r}")
        if self.pad_id is not None and (not isinstance(self.pad_id, int) or self.pad_id < 0):
            raise ValueError(f"pad_id must be a non-negative int or None, got {self.pad_id!r}")
        if self.pipeline is not None and self.pipeline not in PIPELINES:
            raise ValueError(f"pipeline {self.pipeline!r} is not one of {PIPELINES} (or None to infer it)")
        if not isinstance(self.block_size, int) or isinstance(self.block_size, bool) or self.block_size <= 0:
            raise ValueError(f"block_size must be a positive int, got {self.block_size!r}")
        for name in ("pad_to_multiple", "teacher_pad_to_multiple", "max_length", "teacher_max_length"):
            _positive_or_none(name, getattr(self, name))
        if self.max_length is not None and self.max_length % self.block_size:
            raise ValueError(
                f"max_length ({self.max_length}) must be a multiple of block_size ({self.block_size}) so that "
                "block-EOS padding never exceeds it"
            )


def infer_pipeline(row: Mapping[str, Any]) -> Pipeline:
    """The pipeline a row was preprocessed for, from its keys."""
    if ROW_STUDENT_CHUNKS in row:
        return "cross"
    if ROW_PAIR_STUDENT in row:
        return "shared"
    if ROW_TEACHER_IDS in row:
        raise ValueError(
            f"row has {ROW_TEACHER_IDS!r} but neither chunk ids ({ROW_STUDENT_CHUNKS!r}) nor pairs "
            f"({ROW_PAIR_STUDENT!r}); cannot infer the pipeline: set distill_pad's pipeline to 'same', 'shared' "
            "or 'cross', or preprocess the data with `tide preprocess`"
        )
    return "same"


_REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "same": (ROW_STUDENT_IDS, ROW_LABELS),
    "shared": (ROW_STUDENT_IDS, ROW_LABELS, ROW_TEACHER_IDS, ROW_PAIR_STUDENT, ROW_PAIR_TEACHER),
    "cross": (ROW_STUDENT_IDS, ROW_LABELS, ROW_TEACHER_IDS, ROW_STUDENT_CHUNKS, ROW_TEACHER_CHUNKS),
}


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _as_long(values: Any) -> Tensor:
    if isinstance(values, Tensor):
        return values.to(torch.long).reshape(-1)
    # through numpy: about 3x faster than torch.as_tensor on a Python list
    return torch.from_numpy(np.asarray(values, dtype=np.int64).reshape(-1))


class DistillPad:
    """First stage of the collator chain: ``list[row] -> DistillBatch``."""

    stage_input = "rows"
    provides = frozenset({"padded"})
    requires: frozenset[str] = frozenset()
    run_context = {
        "eos_id": "student_eos_id",
        "block_size": "block_size",
        "pipeline": "pipeline",
        "pad_id": "student_pad_id",
        "teacher_pad_id": "teacher_pad_id",
        "max_length": "max_length",
        "teacher_max_length": "teacher_max_length",
    }
    """Configuration filled from the run (:class:`~tide_plugin.hookspecs.RunContext`)."""

    def __init__(self, config: DistillPadConfig | None = None, **kwargs: Any) -> None:
        if config is not None and kwargs:
            raise TypeError("pass either a DistillPadConfig or keyword configuration, not both")
        self.config = config if config is not None else DistillPadConfig(**kwargs)

    def __repr__(self) -> str:
        return f"DistillPad({asdict(self.config)})"

    # -- per-example work --------------------------------------------------
    def _example(self, i: int, row: Mapping[str, Any], pipeline: str, stats: dict[str, float]) -> dict[str, Tensor]:
        cfg = self.config
        missing = [k for k in _REQUIRED_KEYS[pipeline] if k not in row]
        if missing:
            raise KeyError(f"distill_pad ({pipeline} pipeline): row {i} lacks keys {missing}; it has {sorted(row)}")
        ids, labels = _as_long(row[ROW_STUDENT_IDS]), _as_long(row[ROW_LABELS])
        if ids.numel() != labels.numel():
            raise ValueError(f"row {i}: {ROW_STUDENT_IDS} has {ids.numel()} tokens but {ROW_LABELS} has {labels.numel()}")
        out: dict[str, Tensor] = {}
        n = ids.numel()
        cut = n if cfg.max_length is None else min(n, cfg.max_length)
        student_truncated = cut < n
        stats["truncated_examples"] += int(student_truncated)

        if pipeline != "same":
            tids = _as_long(row[ROW_TEACHER_IDS])
            tn = tids.numel()
            tcut = tn if cfg.teacher_max_length is None else min(tn, cfg.teacher_max_length)

        if pipeline == "cross":
            sch, tch = _as_long(row[ROW_STUDENT_CHUNKS]), _as_long(row[ROW_TEACHER_CHUNKS])
            if sch.numel() != n:
                raise ValueError(f"row {i}: {ROW_STUDENT_CHUNKS} has {sch.numel()} entries for {n} student tokens")
            if tch.numel() != tn:
                raise ValueError(f"row {i}: {ROW_TEACHER_CHUNKS} has {tch.numel()} entries for {tn} teacher tokens")
            top = max([int(x.max()) for x in (sch, tch) if x.numel()] + [-1])
            nc = int(row[ROW_NUM_CHUNKS]) if ROW_NUM_CHUNKS in row else top + 1
            if top >= nc:
                raise ValueError(f"row {i}: a chunk id is >= {ROW_NUM_CHUNKS} ({nc})")
            if student_truncated or tcut < tn:
                drop = torch.zeros(nc + 1, dtype=torch.bool)  # slot nc collects -1 (no chunk)
                drop[torch.where(sch[cut:] >= 0, sch[cut:], nc)] = True
                drop[torch.where(tch[tcut:] >= 0, tch[tcut:], nc)] = True
                drop = drop[:nc]
                n_drop = int(drop.sum())
                if n_drop:
                    keep = ~drop
                    new_id = torch.cumsum(keep.long(), 0) - 1
                    new_id = torch.where(keep, new_id, torch.full_like(new_id, -1))
                    remap = torch.cat([new_id, torch.tensor([-1])])  # index -1 -> last slot -> -1
                    sch, tch = remap[sch], remap[tch]
                    nc -= n_drop
                    stats["dropped_chunks"] += n_drop
                sch = sch[:cut]
                if student_truncated:
                    # SPEC 3.3: the teacher is cut after the last kept chunk.
                    kept_pos = torch.nonzero(tch[:tcut] >= 0)
                    if kept_pos.numel():
                        tcut = min(tcut, int(kept_pos.max()) + 1)
                tch = tch[:tcut]
            out["student_chunk_ids"], out["teacher_chunk_ids"] = sch, tch
            out["num_chunks"] = torch.tensor(nc)

        if pipeline == "shared":
            ps, pt = _as_long(row[ROW_PAIR_STUDENT]), _as_long(row[ROW_PAIR_TEACHER])
            if ps.numel() != pt.numel():
                raise ValueError(f"row {i}: {ROW_PAIR_STUDENT} has {ps.numel()} pairs but {ROW_PAIR_TEACHER} {pt.numel()}")
            if ps.numel() and (int(ps.min()) < 0 or int(ps.max()) >= n or int(pt.min()) < 0 or int(pt.max()) >= tn):
                raise ValueError(f"row {i}: a pair position lies outside the sequences (student {n}, teacher {tn} tokens)")
            keep = (ps < cut) & (pt < tcut)
            stats["dropped_pairs"] += int((~keep).sum())
            ps, pt = ps[keep], pt[keep]
            same_id = ids[ps] == tids[pt]
            stats["mismatched_pairs"] += int((~same_id).sum())
            ps, pt = ps[same_id], pt[same_id]
            if student_truncated and pt.numel():
                # SPEC 3.2: the teacher is cut after its last paired position.
                tcut = min(tcut, int(pt.max()) + 1)
            out["pair_student"], out["pair_teacher"] = ps, pt

        if pipeline != "same":
            stats["truncated_teacher_examples"] += int(tcut < tn)
            out["teacher_input_ids"] = tids[:tcut]

        ids, labels = ids[:cut], labels[:cut]
        extra = (-cut) % cfg.block_size
        if extra:
            eos = torch.full((extra,), cfg.eos_id, dtype=torch.long)
            ids, labels = torch.cat([ids, eos]), torch.cat([labels, eos])
            if "student_chunk_ids" in out:
                out["student_chunk_ids"] = torch.cat([out["student_chunk_ids"], torch.full((extra,), -1, dtype=torch.long)])
        stats["block_pad_tokens"] += extra
        out["input_ids"], out["labels"] = ids, labels
        return out

    # -- batch -------------------------------------------------------------
    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> DistillBatch:
        if isinstance(rows, DistillBatch):
            raise TypeError("distill_pad is the first collator stage: it takes a list of dataset rows, got a DistillBatch")
        if isinstance(rows, Mapping) or not isinstance(rows, Sequence) or not rows:
            raise TypeError(f"distill_pad takes a non-empty list of row dicts, got {type(rows).__name__}")
        cfg = self.config
        pipeline = cfg.pipeline or infer_pipeline(rows[0])
        stats: dict[str, float] = {
            k: 0.0
            for k in (
                "truncated_examples",
                "truncated_teacher_examples",
                "dropped_chunks",
                "dropped_pairs",
                "mismatched_pairs",
                "block_pad_tokens",
                "batch_pad_tokens",
            )
        }
        ex = [self._example(i, r, pipeline, stats) for i, r in enumerate(rows)]
        b = len(ex)
        multiple = cfg.block_size
        if cfg.pad_to_multiple:
            multiple = math.lcm(multiple, cfg.pad_to_multiple)
        L = _round_up(max(max(e["input_ids"].numel() for e in ex), 1), multiple)
        pad_id = cfg.eos_id if cfg.pad_id is None else cfg.pad_id
        input_ids = torch.full((b, L), pad_id, dtype=torch.long)
        labels = torch.full((b, L), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((b, L), dtype=torch.bool)
        fields: dict[str, Any] = {}
        if pipeline == "cross":
            fields["student_chunk_ids"] = torch.full((b, L), -1, dtype=torch.long)
        for j, e in enumerate(ex):
            n = e["input_ids"].numel()
            input_ids[j, :n], labels[j, :n], attention[j, :n] = e["input_ids"], e["labels"], True
            if pipeline == "cross":
                fields["student_chunk_ids"][j, :n] = e["student_chunk_ids"]
        stats["batch_pad_tokens"] = float(b * L - int(attention.sum()))

        if pipeline != "same":
            tmult = cfg.teacher_pad_to_multiple or 1
            LT = _round_up(max(max(e["teacher_input_ids"].numel() for e in ex), 1), tmult)
            tids = torch.full((b, LT), cfg.teacher_pad_id, dtype=torch.long)
            tatt = torch.zeros((b, LT), dtype=torch.bool)
            for j, e in enumerate(ex):
                n = e["teacher_input_ids"].numel()
                tids[j, :n], tatt[j, :n] = e["teacher_input_ids"], True
            fields["teacher_input_ids"], fields["teacher_attention_mask"] = tids, tatt
        if pipeline == "cross":
            tch = torch.full((b, LT), -1, dtype=torch.long)
            for j, e in enumerate(ex):
                tch[j, : e["teacher_chunk_ids"].numel()] = e["teacher_chunk_ids"]
            fields["teacher_chunk_ids"] = tch
            fields["num_chunks"] = torch.stack([e["num_chunks"] for e in ex])
        if pipeline == "shared":
            P = max(e["pair_student"].numel() for e in ex)
            ps = torch.zeros((b, P), dtype=torch.long)
            pt = torch.zeros((b, P), dtype=torch.long)
            pm = torch.zeros((b, P), dtype=torch.bool)
            for j, e in enumerate(ex):
                k = e["pair_student"].numel()
                ps[j, :k], pt[j, :k], pm[j, :k] = e["pair_student"], e["pair_teacher"], True
            fields.update(pair_student=ps, pair_teacher=pt, pair_mask=pm)
        return DistillBatch(
            pipeline=pipeline, input_ids=input_ids, labels=labels, attention_mask=attention, stats=stats, **fields
        )


@hookimpl
def tide_plugin_collators() -> list[PluginSpec]:
    return [
        PluginSpec(
            name="distill_pad",
            factory=DistillPad,
            summary="rows -> DistillBatch: block-EOS padding, batch padding, chunk ids / pairs as tensors",
            aliases=("pad",),
            config_cls=DistillPadConfig,
        )
    ]
