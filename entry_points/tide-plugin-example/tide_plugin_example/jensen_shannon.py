"""Token-level Jensen-Shannon divergence between student and teacher.

``JS(P_T, P_S) = 0.5 KL(P_T || M) + 0.5 KL(P_S || M)``, ``M = (P_T + P_S) / 2``,
over masked positions of a token-aligned pipeline (same tokenizer), on the shared
vocabulary slice, at temperature ``tau``, times tau^2; the part is the sum over masked
positions (its declared ``unit``), which the trainer divides by their count.

The divergence is written once, as a pure function of the rows' log-probs
(:func:`jensen_shannon_rows`). ``functional.token_divergence`` runs it on the row engine: on full
logits or on the fused output layer alike, with its exact gradient taken by autograd,
so the objective declares ``supports_projected_logits`` and needs no backward of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from tide_plugin import (DistillInputs, Objective, PluginSpec, Requirement, Unit, check_temperature_weight, functional,
                         hookimpl, token_rows)


def jensen_shannon_rows(log_ps: Tensor, log_pt: Tensor) -> Tensor:
    """``JS(P_T, P_S)`` per row from log-probs ``[n, v]`` (``0 log 0 = 0``)."""
    log_m = torch.logaddexp(log_ps, log_pt) - math.log(2.0)
    p_t, p_s = log_pt.exp(), log_ps.exp()
    zero = torch.zeros((), dtype=log_ps.dtype, device=log_ps.device)
    kl_t = torch.where(p_t > 0, p_t * (log_pt - log_m), zero).sum(-1)
    kl_s = torch.where(p_s > 0, p_s * (log_ps - log_m), zero).sum(-1)
    return 0.5 * (kl_t + kl_s)


@dataclass(frozen=True)
class JensenShannonConfig:
    """:param temperature: tau. :param weight: multiplies the part. Declares what the
    objective needs (``requirements``) and what its part sums over (``unit``)."""

    temperature: float = 2.0
    weight: float = 1.0
    requirements: ClassVar[frozenset[Requirement]] = frozenset({"token_alignment"})
    unit: ClassVar[Unit] = "masked_rows"

    def __post_init__(self) -> None:
        check_temperature_weight(self.temperature, self.weight)


class JensenShannon(Objective):
    """Student logits ``[b, L, V]`` vs teacher logits ``[b, L, V]`` at masked positions."""

    name = "jensen_shannon"
    supports_projected_logits = True  # reads the logits only through token_divergence

    def __init__(self, **config: float) -> None:
        self.config = JensenShannonConfig(**config)

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        b_idx, s_pos, t_pos = token_rows(inputs, False, self.name)  # the masked positions
        loss = functional.token_divergence(
            inputs.student_logits, inputs.teacher_logits, b_idx, s_pos, t_pos, mode=jensen_shannon_rows,
            temperature=self.config.temperature, shared_vocab_size=inputs.shared_vocab_size, reduction="sum",
        )
        return {self.name: loss}


@hookimpl
def tide_plugin_objectives() -> list[PluginSpec]:
    return [
        PluginSpec(
            name="jensen_shannon",
            factory=JensenShannon,
            summary="token-level Jensen-Shannon divergence (example third-party plugin)",
            aliases=("jsd",),
            config_cls=JensenShannonConfig,
        )
    ]
