"""Token-level Jensen-Shannon divergence between student and teacher.

``JS(P_T, P_S) = 0.5 KL(P_T || M) + 0.5 KL(P_S || M)``, ``M = (P_T + P_S) / 2``,
over masked positions of a token-aligned pipeline (same tokenizer), on the shared
vocabulary slice, at temperature ``tau``; mean over masked positions, times tau^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from tide_plugin import DistillInputs, Objective, PluginSpec, Requirement, Unit, check_temperature_weight, hookimpl


@dataclass(frozen=True)
class JensenShannonConfig:
    """:param temperature: tau. :param weight: multiplies the part. Declares what the
    objective needs (``requirements``) and what its part averages over (``unit``)."""

    temperature: float = 2.0
    weight: float = 1.0
    requirements: ClassVar[frozenset[Requirement]] = frozenset({"token_alignment"})
    unit: ClassVar[Unit] = "masked_rows"

    def __post_init__(self) -> None:
        check_temperature_weight(self.temperature, self.weight)


class JensenShannon(Objective):
    """Student logits ``[b, L, V]`` vs teacher logits ``[b, L, V]`` at masked positions."""

    name = "jensen_shannon"

    def __init__(self, **config: float) -> None:
        self.config = JensenShannonConfig(**config)

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        tau = self.config.temperature
        mask = inputs.batch.masked
        v = inputs.shared_vocab_size or min(inputs.student_logits.shape[-1], inputs.teacher_logits.shape[-1])
        s = inputs.student_logits[mask][:, :v].float() / tau
        t = inputs.teacher_logits[mask][:, :v].float() / tau
        if s.shape[0] == 0:
            return {self.name: inputs.student_logits.sum() * 0.0}
        log_p_s, log_p_t = s.log_softmax(-1), t.log_softmax(-1)
        log_m = torch.logsumexp(torch.stack([log_p_s, log_p_t]), dim=0) - math.log(2.0)
        kl_t = (log_p_t.exp() * (log_p_t - log_m)).sum(-1)
        kl_s = (log_p_s.exp() * (log_p_s - log_m)).sum(-1)
        return {self.name: (0.5 * (kl_t + kl_s)).mean() * tau**2}


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
