"""CALM and Reverse CALM: chunk-level objectives across tokenizers (docs/method.md#calm).

Registered names:

- ``calm`` (alias ``alm``): ``-(q log s + (1-q) log(1-s))``;
- ``reverse_calm`` (alias ``reverse_alm``): ``-(s log q + (1-s) log(1-q))``, or with
  ``bernoulli_kl=True`` (ours) ``KL(Bern(s) || Bern(q))``, which adds the student's
  entropy so that the gradient pulls ``s`` towards ``q`` (docs/method.md#calm);

summed over active chunks ``batch.chunk_active`` ``[b, C]`` (the trainer divides by
their count, docs/method.md#normalisation), with
``s = clamp(exp(lp_S / tau))``, ``q = clamp(exp(lp_T / tau))`` and ``lp`` the chunk
sums of gold-token log-probs: student from ``student_logits`` ``[b, L, V_S]``,
``batch.input_ids`` and ``batch.student_chunk_ids`` ``[b, L]``; teacher from
``teacher_logits`` ``[b, L_T, V_T]``, ``batch.teacher_input_ids`` and
``batch.teacher_chunk_ids`` ``[b, L_T]``.

Default temperature 2.0 (the reference trainer config); the reference pipeline-A
launch script uses 5.0: pass ``temperature=5.0`` to reproduce it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..batch import DistillInputs
from ..hookspecs import PluginSpec, Requirement, Unit, hookimpl
from .base import Objective, check_temperature_weight
from .functional import calm, chunk_log_probs

CACHE_STUDENT_CHUNK_LP = "chunk_log_probs.student.active"
"""``inputs.cache`` key: ``[b, C]`` float32 student chunk log-probs of the active chunks
(0 for inactive chunks, whose tokens are not read)."""
CACHE_TEACHER_CHUNK_LP = "chunk_log_probs.teacher.active"
"""``inputs.cache`` key: the same for the teacher (no gradient)."""


def active_chunk_log_probs(inputs: DistillInputs, who: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(lp_S, lp_T, chunk_active)``, ``[b, C]`` each, computed once per step and
    kept in ``inputs.cache`` so that composed chunk objectives share them.

    Only tokens of active chunks are read: a token whose chunk is inactive is
    treated as belonging to no chunk."""
    batch = inputs.batch
    missing = [
        f
        for f in ("student_chunk_ids", "teacher_chunk_ids", "teacher_input_ids", "num_chunks", "chunk_active")
        if getattr(batch, f) is None
    ]
    if missing:
        raise ValueError(
            f"objective {who!r} needs batch fields {missing} from a 'cross' pipeline (chunk alignment and the 'noise' collator)"
        )
    active = batch.chunk_active
    num_chunks = batch.max_chunks
    if active.dim() != 2 or active.shape != (batch.batch_size, num_chunks):
        raise ValueError(
            f"batch.chunk_active has shape {list(active.shape)}, expected [b, max_chunks]=[{batch.batch_size}, {num_chunks}]"
        )
    cache = inputs.cache
    if CACHE_STUDENT_CHUNK_LP not in cache or CACHE_TEACHER_CHUNK_LP not in cache:

        def only_active(chunk_ids: Tensor) -> Tensor:
            if num_chunks == 0:
                return torch.full_like(chunk_ids, -1)
            hit = active.gather(1, chunk_ids.clamp(0, num_chunks - 1)) & (chunk_ids >= 0)
            return torch.where(hit, chunk_ids, torch.full_like(chunk_ids, -1))

        cache[CACHE_STUDENT_CHUNK_LP] = chunk_log_probs(  # CE's gold log-probs cover these rows when given
            inputs.student_logits, batch.input_ids, only_active(batch.student_chunk_ids), num_chunks,
            gold=inputs.student_gold_log_probs,
        )
        with torch.no_grad():
            cache[CACHE_TEACHER_CHUNK_LP] = chunk_log_probs(
                inputs.teacher_logits, batch.teacher_input_ids, only_active(batch.teacher_chunk_ids), num_chunks
            )
    return cache[CACHE_STUDENT_CHUNK_LP], cache[CACHE_TEACHER_CHUNK_LP], active


@dataclass(frozen=True)
class CalmConfig:
    """:param temperature: tau (2.0; the reference pipeline-A script uses 5.0).
    :param weight: multiplies the part."""

    temperature: float = 2.0
    weight: float = 1.0
    requirements: ClassVar[frozenset[Requirement]] = frozenset({"chunks"})
    unit: ClassVar[Unit] = "active_chunks"

    def __post_init__(self) -> None:
        check_temperature_weight(self.temperature, self.weight)


@dataclass(frozen=True)
class ReverseCalmConfig(CalmConfig):
    """:param bernoulli_kl: (ours) the loss is ``KL(Bern(s) || Bern(q))`` instead of the
        reference's cross-entropy form (``docs/method.md#calm``). CALM has no such option:
        its ``-(q log s + (1-q) log(1-s))`` already has the gradient of ``KL(Bern(q) || Bern(s))``."""

    bernoulli_kl: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.bernoulli_kl, bool):
            raise ValueError(f"bernoulli_kl must be True or False, got {self.bernoulli_kl!r}")


class Calm(Objective):
    """CALM (forward): the student chunk probability fits the teacher's as a Bernoulli target."""

    name = "calm"
    supports_projected_logits = True
    config_cls: type[CalmConfig] = CalmConfig

    def __init__(self, **config) -> None:
        self.config = self.config_cls(**config)

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        lp_s, lp_t, active = active_chunk_log_probs(inputs, self.name)
        cfg = self.config
        loss = calm(lp_s, lp_t, active, temperature=cfg.temperature, reverse=self.direction == "reverse",
                    bernoulli_kl=getattr(cfg, "bernoulli_kl", False), reduction="sum")
        return {self.name: loss}


class ReverseCalm(Calm):
    """Reverse CALM: gradient ``(s / tau) log((1-q)/q)`` per chunk (dual-end noise
    filtering); with ``bernoulli_kl=True``, ``(s / tau)(logit(s) - logit(q))``."""

    name = "reverse_calm"
    direction = "reverse"
    config_cls = ReverseCalmConfig


@hookimpl
def tide_plugin_objectives() -> list[PluginSpec]:
    return [
        PluginSpec(
            name="calm",
            factory=Calm,
            summary="chunk-level CALM -(q log s + (1-q) log(1-s)) over active chunks",
            aliases=("alm",),
            config_cls=CalmConfig,
        ),
        PluginSpec(
            name="reverse_calm",
            factory=ReverseCalm,
            summary="chunk-level Reverse CALM -(s log q + (1-s) log(1-q)) over active chunks "
            "(bernoulli_kl=True: KL(Bern(s) || Bern(q)))",
            aliases=("reverse_alm",),
            config_cls=ReverseCalmConfig,
        ),
    ]
