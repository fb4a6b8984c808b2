"""The objective interface and composition.

An objective is a thin object holding hyperparameters; the math lives in pure
functions (:mod:`tide_plugin.objectives.functional`). ``__call__`` reads a
:class:`~tide_plugin.batch.DistillInputs` and returns named scalar loss parts,
already multiplied by the objective's weight.
"""

from __future__ import annotations

import abc
import warnings
from collections.abc import Sequence
from typing import ClassVar, Literal

from torch import Tensor

from ..batch import DistillInputs, PipelineInfo

Requirement = Literal["token_alignment", "pairs", "chunks", "shared_vocab", "timestep", "progress"]


class PipelineMismatchError(ValueError):
    """An objective needs something the configured pipeline does not provide."""


class Objective(abc.ABC):
    """Base class of every objective.

    Subclasses set ``name`` and ``requires`` and implement :meth:`forward`.
    ``weight`` scales every part the objective returns.
    """

    name: ClassVar[str] = "objective"
    requires: frozenset[Requirement] = frozenset()
    weight: float = 1.0
    mode_seeking: ClassVar[bool] = False
    """Reverse (student-weighted) objectives: reverse KL, Reverse CALM."""
    interpolates_teacher: ClassVar[bool] = False
    """Objectives whose target mixes student and teacher by a lambda schedule (TIDAL)."""
    supports_projected_logits: ClassVar[bool] = False
    """True when :meth:`forward` also accepts ``inputs.student_logits`` / ``teacher_logits``
    as :class:`~tide_plugin.objectives.fused.ProjectedLogits` (it reads them only through
    :mod:`~tide_plugin.objectives.fused`). The trainer's fused output layer is used only
    when every objective says so; others get full ``[b, L, V]`` logits."""

    def check_pipeline(self, info: PipelineInfo) -> None:
        """Raise :class:`PipelineMismatchError` naming what is missing."""
        problems = []
        if "chunks" in self.requires and not info.has_chunks:
            problems.append(f"chunk alignment (a 'cross' pipeline), got pipeline {info.pipeline!r}")
        if "pairs" in self.requires and not info.has_pairs:
            problems.append(f"template-aligned pairs (a 'shared' pipeline), got pipeline {info.pipeline!r}")
        if "token_alignment" in self.requires and not info.has_token_alignment:
            problems.append(
                f"token-level alignment (pipeline 'same' or 'shared'), got pipeline {info.pipeline!r}; "
                "use a chunk-level objective (calm, reverse_calm, tidal_calm) across tokenizers"
            )
        if "timestep" in self.requires and not info.has_timestep:
            problems.append("the diffusion timestep t")
        if "progress" in self.requires and not info.has_progress:
            problems.append("training progress (global_step / max_steps)")
        if problems:
            raise PipelineMismatchError(f"objective {self.name!r} needs " + "; ".join(problems))

    @abc.abstractmethod
    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        """Unweighted named scalar parts."""

    def __call__(self, inputs: DistillInputs) -> dict[str, Tensor]:
        parts = self.forward(inputs)
        if self.weight == 1.0:
            return parts
        return {k: v * self.weight for k, v in parts.items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, weight={self.weight})"


class ComposedObjective(Objective):
    """``a+b``: components share one student and one teacher forward; parts are
    returned side by side (their names must not collide)."""

    name = "composed"

    def __init__(self, components: Sequence[Objective]):
        if not components:
            raise ValueError("a composed objective needs at least one component")
        self.components = list(components)
        self.requires = frozenset().union(*(c.requires for c in self.components))
        self.supports_projected_logits = all(c.supports_projected_logits for c in self.components)
        tidal = [c.name for c in self.components if c.interpolates_teacher]
        reverse = [c.name for c in self.components if c.mode_seeking]
        if tidal and reverse:
            warnings.warn(
                f"composing {tidal} with the reverse objective(s) {reverse}: TIDAL pairs with forward "
                "objectives only (SPEC 5.3); late in training its (1 - lambda) factor suppresses the "
                "self-selection of reverse objectives",
                UserWarning,
                stacklevel=3,
            )

    def check_pipeline(self, info: PipelineInfo) -> None:
        for c in self.components:
            c.check_pipeline(info)

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
