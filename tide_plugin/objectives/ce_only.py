"""The CE-only control: ``none`` (alias ``ce``) adds no part to the BD3LM CE term.

A run with ``--objective none`` goes through the same trainer and the same collator
chain as a distilled run of its pipeline (the noise stage draws the same masks, the
data comes in the same order), but reads no teacher: the trainer builds no teacher
adapter and runs no teacher forward (``reads_teacher = False``), and only ``ce`` is
logged. It is the baseline a distilled run is compared with
(``docs/method.md#student-forward``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..batch import DistillInputs
from ..hookspecs import PluginSpec, Requirement, Unit, hookimpl
from .base import Objective


@dataclass(frozen=True)
class CEOnlyConfig:
    """No parameters: the CE term's own weight is the run's ``ce_weight``."""

    requirements: ClassVar[frozenset[Requirement]] = frozenset()
    unit: ClassVar[Unit] = "masked_rows"


class CEOnly(Objective):
    """No parts, no teacher: the trainer's loss is ``ce_weight * CE`` alone."""

    name = "none"
    reads_teacher = False
    supports_projected_logits = True  # it reads no logits at all

    def __init__(self, **config):
        self.config = CEOnlyConfig(**config)

    @property
    def units(self) -> Mapping[str, Unit]:
        return {}

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:  # noqa: ARG002
        return {}


@hookimpl
def tide_plugin_objectives() -> list[PluginSpec]:
    return [
        PluginSpec(
            name="none",
            factory=CEOnly,
            summary="CE only (no teacher, no teacher forward): the control of a distilled run",
            aliases=("ce",),
            config_cls=CEOnlyConfig,
        )
    ]
