"""``distill_pad``: the first collator stage. Dataset rows -> :class:`DistillBatch`.

Per example (docs/method.md#noising): optional truncation to ``max_length`` and
``teacher_max_length`` by the pipeline's rule (:func:`tide_plugin.pipelines.cut_chunks`,
:func:`~tide_plugin.pipelines.cut_pairs`: chunks / pairs that cross the cut are
dropped, the teacher is cut after the last kept chunk / pair), then block-EOS padding: ids and labels are padded with the
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
student and teacher ids differ: dropped, docs/method.md#template-alignment), ``block_pad_tokens``,
``batch_pad_tokens``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from torch import Tensor

from ..batch import DistillBatch
from ..hookspecs import DEFAULT_BLOCK_SIZE, PluginSpec, hookimpl
from ..pipelines import (
    IGNORE_INDEX,
    ROW_LABELS,
    ROW_STUDENT_IDS,
    Pipeline,
    get_pipeline,
    infer_pipeline,
    stack_padded,
)

__all__ = ["DistillPad", "DistillPadConfig", "infer_pipeline"]


def _positive_or_none(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


@dataclass
class DistillPadConfig:
    """Configuration of ``distill_pad``.

    :param eos_id: student EOS id used for block padding (required).
    :param pipeline: ``same`` | ``shared`` | ``cross``; ``None`` infers it from
        the row keys (chunk ids -> cross, pairs -> shared, no teacher ids -> same).
    :param block_size: BD3LM block size ``B`` (default 32, docs/method.md#notation).
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
    pipeline: Pipeline | None = None
    block_size: int = DEFAULT_BLOCK_SIZE
    pad_id: int | None = None
    teacher_pad_id: int = 0
    pad_to_multiple: int | None = None
    teacher_pad_to_multiple: int | None = None
    max_length: int | None = None
    teacher_max_length: int | None = None

    def __post_init__(self) -> None:
        if self.eos_id is None:
            raise ValueError(
                "distill_pad needs eos_id (the student tokenizer's EOS id, used for block-EOS padding, docs/method.md#noising); "
                "got None"
            )
        for name in ("eos_id", "teacher_pad_id"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be a non-negative int, got {v!r}")
        if self.pad_id is not None and (not isinstance(self.pad_id, int) or self.pad_id < 0):
            raise ValueError(f"pad_id must be a non-negative int or None, got {self.pad_id!r}")
        if self.pipeline is not None:
            get_pipeline(self.pipeline)  # unknown names: one line with the allowed ones
        if not isinstance(self.block_size, int) or isinstance(self.block_size, bool) or self.block_size <= 0:
            raise ValueError(f"block_size must be a positive int, got {self.block_size!r}")
        for name in ("pad_to_multiple", "teacher_pad_to_multiple", "max_length", "teacher_max_length"):
            _positive_or_none(name, getattr(self, name))
        if self.max_length is not None and self.max_length % self.block_size:
            raise ValueError(
                f"max_length ({self.max_length}) must be a multiple of block_size ({self.block_size}) so that "
                "block-EOS padding never exceeds it"
            )


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _as_array(values: Any) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().numpy().astype(np.int64, copy=False).reshape(-1)
    return np.asarray(values, dtype=np.int64).reshape(-1)


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
    def _example(self, i: int, row: Mapping[str, Any], strategy: Any, stats: dict[str, float]) -> dict[str, np.ndarray]:
        cfg = self.config
        missing = [k for k in strategy.row_keys if k not in row]
        if missing:
            raise KeyError(
                f"distill_pad ({strategy.name} pipeline): row {i} lacks keys {missing}; it has {sorted(row)}"
            )
        ids, labels = _as_array(row[ROW_STUDENT_IDS]), _as_array(row[ROW_LABELS])
        if ids.size != labels.size:
            raise ValueError(f"row {i}: {ROW_STUDENT_IDS} has {ids.size} tokens but {ROW_LABELS} has {labels.size}")
        n = ids.size
        cut = n if cfg.max_length is None else min(n, cfg.max_length)
        stats["truncated_examples"] += int(cut < n)
        out = strategy.cut_example(i, row, ids, cut, cfg.teacher_max_length, stats)
        extra = (-cut) % cfg.block_size  # docs/method.md#noising: block-EOS padding, a target
        eos = np.full(extra, cfg.eos_id, dtype=np.int64)
        out["input_ids"] = np.concatenate([ids[:cut], eos])
        out["labels"] = np.concatenate([labels[:cut], eos])
        stats["block_pad_tokens"] += extra
        return out

    # -- batch -------------------------------------------------------------
    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> DistillBatch:
        if isinstance(rows, DistillBatch):
            raise TypeError("distill_pad is the first collator stage: it takes a list of dataset rows, got a DistillBatch")
        if isinstance(rows, Mapping) or not isinstance(rows, Sequence) or not rows:
            raise TypeError(f"distill_pad takes a non-empty list of row dicts, got {type(rows).__name__}")
        cfg = self.config
        strategy = get_pipeline(cfg.pipeline or infer_pipeline(rows[0]))
        stats = dict.fromkeys(_STATS, 0.0)
        ex = [self._example(i, r, strategy, stats) for i, r in enumerate(rows)]
        multiple = cfg.block_size
        if cfg.pad_to_multiple:
            multiple = math.lcm(multiple, cfg.pad_to_multiple)
        L = _round_up(max(max(e["input_ids"].size for e in ex), 1), multiple)
        pad_id = cfg.eos_id if cfg.pad_id is None else cfg.pad_id
        input_ids, attention = stack_padded([e["input_ids"] for e in ex], L, pad_id)
        labels, _ = stack_padded([e["labels"] for e in ex], L, IGNORE_INDEX)
        stats["batch_pad_tokens"] = float(attention.numel() - int(attention.sum()))
        fields = strategy.batch_fields(ex, L, cfg.teacher_pad_id, cfg.teacher_pad_to_multiple or 1)
        return DistillBatch(
            pipeline=strategy.name, input_ids=input_ids, labels=labels, attention_mask=attention, stats=stats, **fields
        )


_STATS = (
    "truncated_examples",
    "truncated_teacher_examples",
    "dropped_chunks",
    "dropped_pairs",
    "mismatched_pairs",
    "block_pad_tokens",
    "batch_pad_tokens",
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
