"""KL and reverse KL between student and teacher token distributions (docs/method.md#token-kl).

Registered names:

- ``kl`` (alias ``kl_aligned``): ``KL(P_T || P_S) * tau^2`` summed over masked positions;
- ``reverse_kl`` (alias ``reverse_kl_aligned``): ``KL(P_S || P_T) * tau^2`` summed.

Each part is a sum over its unit (``masked_rows`` or ``pairs``); the trainer divides it
(docs/method.md#normalisation).

``P = softmax(z / tau)`` on the shared vocabulary slice (``inputs.shared_vocab_size``,
default the smaller vocabulary). Position by position (``aligned=False``, pipelines
``same``/``shared`` with identical sequences) the rows are the masked student
positions ``batch.masked`` ``[b, L]``; with ``aligned=True`` (the ``*_aligned``
aliases, pipeline ``shared``) the rows are the template pairs
``batch.pair_student``/``pair_teacher`` ``[b, P]`` whose ``pair_mask`` is set and whose
student position is masked.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..batch import DistillInputs
from ..hookspecs import PluginSpec, Requirement, Unit, hookimpl
from .base import Objective, aligned_hint, check_temperature_weight
from .functional import aligned_rows, masked_rows, token_divergence


@dataclass(frozen=True)
class KLConfig:
    """:param temperature: tau (docs/method.md#token-kl: 2). :param weight: multiplies the part.
    :param aligned: read template pairs instead of positions (the ``*_aligned`` aliases)."""

    temperature: float = 2.0
    weight: float = 1.0
    aligned: bool = False

    def __post_init__(self) -> None:
        check_temperature_weight(self.temperature, self.weight)
        if not isinstance(self.aligned, bool):
            raise ValueError(f"aligned must be True or False, got {self.aligned!r}")

    @property
    def requirements(self) -> frozenset[Requirement]:
        return frozenset({"pairs"} if self.aligned else {"token_alignment"})

    @property
    def unit(self) -> Unit:
        return "pairs" if self.aligned else "masked_rows"


def token_rows(inputs: DistillInputs, aligned: bool, who: str, aligned_alias: str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(batch_index, student_position, teacher_position)`` ``[N]`` of the rows a
    token-level objective compares (shared by ``kl``, ``reverse_kl`` and ``tidal``)."""
    batch = inputs.batch
    if batch.masked is None:
        raise ValueError(f"objective {who!r} needs batch.masked; put the 'noise' collator in the chain")
    if aligned:
        if batch.pair_student is None or batch.pair_teacher is None or batch.pair_mask is None:
            raise ValueError(
                f"objective {who!r} (aligned) needs batch.pair_student/pair_teacher/pair_mask from a 'shared' pipeline"
            )
        return aligned_rows(batch.pair_student, batch.pair_teacher, batch.pair_mask, batch.masked)
    s_len, t_len = inputs.student_logits.shape[1], inputs.teacher_logits.shape[1]
    if s_len != t_len:
        raise ValueError(
            f"objective {who!r} compares position by position but student length {s_len} != teacher length "
            f"{t_len}{aligned_hint(aligned_alias) or '; set aligned=True (template pairs)'}"
        )
    b_idx, pos = masked_rows(batch.masked)
    return b_idx, pos, pos


class TokenKL(Objective):
    """Forward KL. Student logits ``[b, L, V_S]``, teacher logits ``[b, L_T, V_T]``."""

    name = "kl"
    aligned_alias = "kl_aligned"
    supports_projected_logits = True

    def __init__(self, **config) -> None:
        self.config = KLConfig(**config)

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        b_idx, s_pos, t_pos = token_rows(inputs, self.config.aligned, self.name, self.aligned_alias)
        loss = token_divergence(
            inputs.student_logits,
            inputs.teacher_logits,
            b_idx,
            s_pos,
            t_pos,
            mode=self.direction,
            temperature=self.config.temperature,
            shared_vocab_size=inputs.shared_vocab_size,
            reduction="sum",
        )
        return {self.name: loss}


class ReverseTokenKL(TokenKL):
    """Reverse KL ``KL(P_S || P_T)``."""

    name = "reverse_kl"
    aligned_alias = "reverse_kl_aligned"
    direction = "reverse"


@hookimpl
def tide_plugin_objectives() -> list[PluginSpec]:
    return [
        PluginSpec(
            name="kl",
            factory=TokenKL,
            summary="token KL(P_T || P_S) * tau^2 over masked positions (kl_aligned: template pairs)",
            aliases=("kl_aligned",),
            alias_config={"kl_aligned": {"aligned": True}},
            config_cls=KLConfig,
        ),
        PluginSpec(
            name="reverse_kl",
            factory=ReverseTokenKL,
            summary="token KL(P_S || P_T) * tau^2 over masked positions (reverse_kl_aligned: template pairs)",
            aliases=("reverse_kl_aligned",),
            alias_config={"reverse_kl_aligned": {"aligned": True}},
            config_cls=KLConfig,
        ),
    ]
