"""The objective base class, composition and the helpers objective authors share.

An objective is a thin object holding a config; the math lives in pure functions
(:mod:`tide_plugin.objectives.functional`). ``__call__`` reads a
:class:`~tide_plugin.batch.DistillInputs` and returns named scalar loss parts,
already multiplied by the objective's weight, each the *sum* over its unit: the
trainer divides it once, by the window's count of that unit
(docs/method.md#normalisation). What it needs (``requirements``) and what its part
sums over (``unit``) are declared by its config class, so they are known before it
is built (:class:`~tide_plugin.hookspecs.ObjectiveConfigProtocol`).
"""

from __future__ import annotations

import abc
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from torch import Tensor

from ..batch import DistillBatch, DistillInputs, PipelineInfo
from ..hookspecs import Itself, Requirement, Unit

Direction = Literal["forward", "reverse"]


class PipelineMismatchError(ValueError):
    """An objective needs something the configured pipeline does not provide."""


def check_temperature_weight(temperature: float, weight: float) -> None:
    """Config checks shared by the objectives: ``temperature > 0`` and a finite ``weight >= 0``."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
        temperature > 0 and math.isfinite(temperature)
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (weight >= 0 and math.isfinite(weight)):
        raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")


def check_requirements(name: str, requirements: frozenset[str], info: PipelineInfo, *,
                       aligned_alias: str | None = None) -> None:
    """Raise :class:`PipelineMismatchError` naming each of ``requirements`` that
    the pipeline ``info`` does not provide; ``aligned_alias`` (the objective's registered
    name that reads template pairs) is suggested where the pipeline offers pairs."""
    problems = []
    if "chunks" in requirements and not info.has_chunks:
        problems.append(f"chunk alignment (a 'cross' pipeline), got pipeline {info.pipeline!r}")
    if "pairs" in requirements and not info.has_pairs:
        problems.append(f"template-aligned pairs (a 'shared' pipeline), got pipeline {info.pipeline!r}")
    if "token_alignment" in requirements and not info.has_token_alignment:
        if info.has_pairs:
            problems.append(
                f"position-by-position alignment (pipeline 'same'), got pipeline {info.pipeline!r}, whose teacher "
                f"reads another template{aligned_hint(aligned_alias)}"
            )
        else:
            problems.append(
                f"token-level alignment (pipeline 'same' or 'shared'), got pipeline {info.pipeline!r}; "
                "use a chunk-level objective (calm, reverse_calm, tidal_calm) across tokenizers"
            )
    if "timestep" in requirements and not info.has_timestep:
        problems.append("the diffusion timestep t")
    if "progress" in requirements and not info.has_progress:
        problems.append("training progress (global_step / max_steps)")
    if "projection" in requirements and not info.has_projection:
        problems.append("a vocabulary projection W from the teacher's tokens to the student's (built per tokenizer pair)")
    if problems:
        raise PipelineMismatchError(f"objective {name!r} needs " + "; ".join(problems))


def aligned_hint(alias: str | None) -> str:
    """``"; use 'taid_aligned' (template pairs)"`` for an objective whose registered alias
    ``alias`` reads template pairs, or ``""`` when it has none."""
    return f"; use {alias!r} (template pairs)" if alias else ""


def unit_count(batch: DistillBatch, unit: Unit) -> Tensor:
    """How many of ``unit`` the batch holds (a 0-dim long tensor on the batch's
    device): masked student positions, counted pairs (``pair_mask`` and the student
    position masked) or active chunks: what the trainer divides a part's sum by."""
    if unit == "masked_rows":
        return _field(batch, "masked", unit).sum()
    if unit == "pairs":
        masked = _field(batch, "masked", unit)
        pairs = _field(batch, "pair_student", unit).clamp(0, max(masked.shape[1] - 1, 0))
        return (_field(batch, "pair_mask", unit) & masked.gather(1, pairs)).sum()
    if unit == "active_chunks":
        return _field(batch, "chunk_active", unit).sum()
    raise ValueError(f"unit {unit!r} is not one of ('masked_rows', 'pairs', 'active_chunks')")


def _field(batch: DistillBatch, name: str, unit: str) -> Tensor:
    value = getattr(batch, name)
    if value is None:
        raise ValueError(f"counting {unit!r} needs batch.{name}, which is unset")
    return value


class Objective(abc.ABC):
    """Base class of the objectives (:class:`~tide_plugin.hookspecs.ObjectiveProtocol`).

    Subclasses set ``name``, build ``self.config`` (an instance of their spec's
    ``config_cls``: it declares ``requirements`` and ``unit``, and may have a
    ``weight``) and implement :meth:`forward`. ``weight`` scales every part.
    """

    name: ClassVar[str] = "objective"
    direction: ClassVar[Direction] = "forward"
    aligned_alias: ClassVar[str | None] = None
    """The registered name of this objective that reads template pairs (``kl_aligned``),
    suggested when it meets a pipeline whose teacher reads another template."""
    """``reverse`` for student-weighted (mode-seeking) objectives: reverse KL,
    Reverse CALM; the forward and reverse variants share one implementation."""
    interpolates_teacher: ClassVar[bool] = False
    """Objectives whose target mixes student and teacher by a strength schedule (TIDAL)."""
    supports_projected_logits: ClassVar[bool] = False
    """True when :meth:`forward` also accepts ``inputs.student_logits`` / ``teacher_logits``
    as :class:`~tide_plugin.logits.ProjectedLogits` (it reads them only through
    :mod:`~tide_plugin.objectives.functional` or :mod:`~tide_plugin.objectives.rows`). The trainer's fused output layer is used only
    when every objective says so; others get full ``[b, L, V]`` logits."""
    reads_teacher: ClassVar[bool] = True
    """False for an objective that never reads ``inputs.teacher_logits`` (the CE-only
    control, ``none``): the trainer then builds no teacher and runs no teacher forward."""
    components: Sequence[Objective] = Itself()
    """The objectives this one is made of: ``(self,)``; a composed objective lists its parts."""
    config: Any

    @property
    def weight(self) -> float:
        return float(getattr(self.config, "weight", 1.0))

    @property
    def requirements(self) -> frozenset[Requirement]:
        return frozenset(self.config.requirements)

    @property
    def unit(self) -> Unit:
        return self.config.unit

    @property
    def units(self) -> Mapping[str, Unit]:
        """Part name -> unit: one part, named after the objective."""
        return {self.name: self.unit}

    def check_pipeline(self, info: PipelineInfo) -> None:
        """Raise :class:`PipelineMismatchError` naming what is missing."""
        check_requirements(self.name, self.requirements, info, aligned_alias=self.aligned_alias)

    def metrics(self, inputs: DistillInputs) -> dict[str, Tensor]:  # noqa: ARG002 - a hook for subclasses
        """Extra detached scalars the trainer logs this step (none by default)."""
        return {}

    @abc.abstractmethod
    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        """Unweighted named scalar parts, each the sum over the objective's unit."""

    def __call__(self, inputs: DistillInputs) -> dict[str, Tensor]:
        parts = self.forward(inputs)
        if self.weight == 1.0:
            return parts
        return {k: v * self.weight for k, v in parts.items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


class ComposedObjective(Objective):
    """``a+b``: components share one student and one teacher forward; parts are
    returned side by side (their names must not collide)."""

    name = "composed"

    def __init__(self, components: Sequence[Any]):
        if not components:
            raise ValueError("a composed objective needs at least one component")
        self.components = list(components)
        seen: dict[str, str] = {}
        for c in self.components:
            for part in c.units:
                if part in seen:
                    raise ValueError(f"composed objective: {seen[part]!r} and {c.name!r} both return the part {part!r}")
                seen[part] = c.name
        self.supports_projected_logits = all(getattr(c, "supports_projected_logits", False) for c in self.components)
        self.reads_teacher = any(getattr(c, "reads_teacher", True) for c in self.components)
        tidal = [c.name for c in self.components if getattr(c, "interpolates_teacher", False)]
        reverse = [c.name for c in self.components if getattr(c, "direction", "forward") == "reverse"]
        if tidal and reverse:
            warnings.warn(
                f"composing {tidal} with the reverse objective(s) {reverse}: TIDAL pairs with forward "
                "objectives only (docs/method.md#tidal); late in training its (1 - lambda) factor suppresses the "
                "self-selection of reverse objectives",
                UserWarning,
                stacklevel=3,
            )

    @property
    def weight(self) -> float:
        return 1.0  # each component applies its own

    @property
    def requirements(self) -> frozenset[Requirement]:
        return frozenset().union(*(c.requirements for c in self.components))

    @property
    def units(self) -> Mapping[str, Unit]:
        return {part: unit for c in self.components for part, unit in c.units.items()}

    def check_pipeline(self, info: PipelineInfo) -> None:
        for c in self.components:
            c.check_pipeline(info)

    def metrics(self, inputs: DistillInputs) -> dict[str, Tensor]:
        return {k: v for c in self.components for k, v in c.metrics(inputs).items()}

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for c in self.components:
            for k, v in c(inputs).items():
                if k in out:
                    raise ValueError(f"composed objective: two components return the part {k!r}")
                out[k] = v
        return out

    def __repr__(self) -> str:
        return "+".join(repr(c) for c in self.components)


__all__ = [
    "ComposedObjective",
    "Direction",
    "Objective",
    "PipelineMismatchError",
    "aligned_hint",
    "check_requirements",
    "check_temperature_weight",
    "unit_count",
]
