"""Typed structures passed between the stages of the pipeline.

Data flow (one direction):

``dataset rows (dict) -> distill_pad -> DistillBatch -> noise -> comp_demo ->
trainer (student forward, teacher forward) -> DistillInputs -> objectives``.

Shapes use the names of docs/method.md#notation: ``b`` batch, ``L`` student length (a multiple of the
block size), ``L_T`` teacher length, ``C`` chunks per example (max over the batch),
``P`` aligned pairs per example (max over the batch), ``V`` views (1 or 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

from .pipelines import (
    IGNORE_INDEX,
    PIPELINES,
    ROW_LABELS,
    ROW_NUM_CHUNKS,
    ROW_PAIR_STUDENT,
    ROW_PAIR_TEACHER,
    ROW_STUDENT_CHUNKS,
    ROW_STUDENT_IDS,
    ROW_TEACHER_CHUNKS,
    ROW_TEACHER_IDS,
    Pipeline,
    get_pipeline,
)

# Pipeline names, row keys and IGNORE_INDEX are defined once, in tide_plugin.pipelines.
__all__ = [
    "IGNORE_INDEX",
    "PIPELINES",
    "ROW_LABELS",
    "ROW_NUM_CHUNKS",
    "ROW_PAIR_STUDENT",
    "ROW_PAIR_TEACHER",
    "ROW_STUDENT_CHUNKS",
    "ROW_STUDENT_IDS",
    "ROW_TEACHER_CHUNKS",
    "ROW_TEACHER_IDS",
    "AlignedExample",
    "DistillBatch",
    "DistillInputs",
    "Pipeline",
    "PipelineInfo",
]


@dataclass
class AlignedExample:
    """One aligned conversation, unpadded (the aligners' output).

    ``student_chunk_ids`` / ``teacher_chunk_ids`` give each token's chunk (``-1``:
    none) and are set for the cross-tokenizer pipeline; ``pairs`` holds
    ``(student_pos, teacher_pos)`` with equal ids for the template pipeline.
    """

    student_ids: list[int]
    labels: list[int]
    teacher_ids: list[int]
    student_chunk_ids: list[int] | None = None
    teacher_chunk_ids: list[int] | None = None
    num_chunks: int = 0
    pairs: list[tuple[int, int]] | None = None
    dropped_pairs: int = 0
    stats: dict[str, float] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            ROW_STUDENT_IDS: list(self.student_ids),
            ROW_LABELS: list(self.labels),
            ROW_TEACHER_IDS: list(self.teacher_ids),
        }
        if self.student_chunk_ids is not None:
            row[ROW_STUDENT_CHUNKS] = list(self.student_chunk_ids)
            row[ROW_TEACHER_CHUNKS] = list(self.teacher_chunk_ids or [])
            row[ROW_NUM_CHUNKS] = int(self.num_chunks)
        if self.pairs is not None:
            row[ROW_PAIR_STUDENT] = [s for s, _ in self.pairs]
            row[ROW_PAIR_TEACHER] = [t for _, t in self.pairs]
        return row


@dataclass
class DistillBatch:
    """A collated batch. Stages fill the optional fields in order.

    Filled by ``distill_pad``:
      - ``input_ids`` ``[b, L]`` long: clean student ids ``x0`` (block-EOS padded).
      - ``labels`` ``[b, L]`` long: ``-100`` on prompt tokens; EOS padding is a target.
      - ``attention_mask`` ``[b, L]`` bool: real (non-pad) student tokens. Block-EOS
        padding counts as real (docs/method.md#noising); only batch padding beyond it is False.
      - ``teacher_input_ids`` ``[b, L_T]`` long, ``teacher_attention_mask`` ``[b, L_T]`` bool
        (``None`` in the ``same`` pipeline, where the teacher reads the student's ids).
      - ``student_chunk_ids`` ``[b, L]``, ``teacher_chunk_ids`` ``[b, L_T]`` long, ``-1`` = none;
        ``num_chunks`` ``[b]`` long (cross).
      - ``pair_student``, ``pair_teacher`` ``[b, P]`` long, ``pair_mask`` ``[b, P]`` bool (shared).
    Filled by ``noise``:
      - ``t`` ``[b]`` float32 in ``[eps, 1)``; ``masked`` ``[b, L]`` bool; ``noisy_input_ids``
        ``[b, L]`` (``x_t``); ``ce_time_weight`` ``[b]`` float32: ``w(t)``, the per-example
        weight of the CE term (docs/method.md#noising; 1 under uniform weighting), not to be confused
        with ``DistillConfig.ce_weight``, the weight of the whole CE term.
      - ``chunk_active`` ``[b, C]`` bool: hit chunks without prompt tokens (cross).
      - ``teacher_masked`` ``[b, L_T]`` bool; ``teacher_noisy_ids`` ``[V, b, L_T]`` with V=1.
    Filled by ``comp_demo``:
      - ``teacher_noisy_ids`` ``[2, b, L_T]``: view 1 masks only B, view 2 only A.
      - ``teacher_view_index`` ``[b, L_T]`` long: the view whose logits are read at each
        teacher position (1 for positions in A, else 0).
    """

    pipeline: Pipeline
    input_ids: Tensor
    labels: Tensor
    attention_mask: Tensor
    teacher_input_ids: Tensor | None = None
    teacher_attention_mask: Tensor | None = None
    student_chunk_ids: Tensor | None = None
    teacher_chunk_ids: Tensor | None = None
    num_chunks: Tensor | None = None
    pair_student: Tensor | None = None
    pair_teacher: Tensor | None = None
    pair_mask: Tensor | None = None
    # noise
    t: Tensor | None = None
    masked: Tensor | None = None
    noisy_input_ids: Tensor | None = None
    ce_time_weight: Tensor | None = None
    chunk_active: Tensor | None = None
    teacher_masked: Tensor | None = None
    teacher_noisy_ids: Tensor | None = None
    # comp_demo
    teacher_view_index: Tensor | None = None
    # counters for reporting (dropped pairs, truncated chunks, ...)
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def max_chunks(self) -> int:
        if self.num_chunks is None or self.num_chunks.numel() == 0:
            return 0
        return int(self.num_chunks.max())

    def to(self, device: torch.device | str) -> DistillBatch:
        moved = {
            f.name: (v.to(device, non_blocking=True) if isinstance(v := getattr(self, f.name), Tensor) else v)
            for f in fields(self)
        }
        return replace(self, **moved)

    def tensors(self) -> dict[str, Tensor]:
        return {f.name: v for f in fields(self) if isinstance(v := getattr(self, f.name), Tensor)}


@dataclass
class DistillInputs:
    """Everything an objective may read, produced once per step by the trainer.

    - ``student_logits`` ``[b, L, V_S]`` (the ``x_t`` half of the BD3LM forward), any dtype.
    - ``teacher_logits`` ``[b, L_T, V_T]`` (views already merged), no grad; in the
      ``same`` pipeline ``L_T == L``.
    - On the fused output layer (objectives with ``supports_projected_logits``) both are
      :class:`~tide_plugin.logits.ProjectedLogits` (hidden states and the
      output projection), read through :mod:`tide_plugin.objectives.functional`.
    - ``progress``: ``global_step / max(max_steps, 1)`` from the trainer state.
    - ``shared_vocab_size``: ``V_shared`` for token-level objectives, or ``None``
      for the full (identical) vocabulary.
    """

    batch: DistillBatch
    student_logits: Tensor
    teacher_logits: Tensor | None
    """``None`` only in a run whose objective does not read the teacher (``reads_teacher``)."""
    progress: float = 0.0
    shared_vocab_size: int | None = None
    projection: Any = None
    """The vocabulary projection ``W`` ``[V_T, V_S]`` (teacher tokens to student tokens) of
    the run's tokenizer pair, for objectives that require ``projection``; else ``None``."""
    cache: dict[str, Any] = field(default_factory=dict)
    """Shared intermediate results (e.g. chunk log-probs) so composed objectives
    compute them once per step."""
    student_gold_log_probs: tuple[Tensor, Tensor] | None = None
    """``(lp [b, L], rows [b, L] bool)``: the student's gold-token log-probs of
    ``batch.input_ids`` at the rows CE reads (masked and maskable), computed once by the
    trainer before the objective runs (``docs/architecture.md#the-training-step``);
    chunk objectives read theirs from it instead of projecting those rows again."""


@dataclass(frozen=True)
class PipelineInfo:
    """What a built pipeline offers; objectives check their needs against it when
    they are built, not at step 1 (a run's :class:`~tide_plugin.training.RunPlan` holds it)."""

    pipeline: Pipeline
    shared_vocab_size: int | None = None
    """``V_shared`` of the run (``None``: the smaller vocabulary); the plan warns when a
    token-level objective runs without it."""
    has_timestep: bool = True
    has_progress: bool = True
    has_projection: bool = False

    @property
    def has_chunks(self) -> bool:
        return get_pipeline(self.pipeline).has_chunks

    @property
    def has_pairs(self) -> bool:
        return get_pipeline(self.pipeline).has_pairs

    @property
    def has_token_alignment(self) -> bool:
        return get_pipeline(self.pipeline).has_token_alignment
