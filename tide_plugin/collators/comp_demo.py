"""``comp_demo``: complementary demonstrations for the teacher (docs/method.md#compdemo).
``DistillBatch -> DistillBatch``, after ``noise``.

The masked set ``M`` is split into ``A`` (each element independently with
probability ``demo_ratio``) and ``B = M \\ A``. View 1 masks only ``B`` (``A`` is
revealed as a demonstration), view 2 masks only ``A``. The trainer reads the
teacher's logits from view 2 at positions in ``A`` and from view 1 elsewhere.

The split is drawn per masked student token and mapped to the teacher through
the pairing (``same``: identity; ``shared``: the template pairs), or per hit
chunk and mapped to all of that chunk's teacher tokens (``cross``). The student
fields are not touched.

Fills: ``teacher_noisy_ids`` ``[2, b, L_T]`` (view 1, view 2) and
``teacher_view_index`` ``[b, L_T]`` long (1 at teacher positions in ``A``, else 0).
``stats``: ``demo_a_tokens`` / ``demo_b_tokens`` (teacher positions in A / B).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..batch import DistillBatch
from ..hookspecs import PluginSpec, hookimpl
from ..pipelines import get_pipeline
from .noise import SeededStage


@dataclass
class CompDemoConfig:
    """Configuration of ``comp_demo``.

    :param demo_ratio: probability ``r`` that a masked element goes to ``A``
        (default 0.5, docs/method.md#compdemo); must lie in (0, 1).
    :param seed: seed of the stage's random stream.
    """

    demo_ratio: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        r = self.demo_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < float(r) < 1.0:
            raise ValueError(f"demo_ratio must lie strictly between 0 and 1, got {r!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}")


class CompDemo(SeededStage):
    """Builds the two complementary teacher views from a noised batch."""

    stage_input = "batch"
    requires = frozenset({"padded", "noised"})
    provides = frozenset({"comp_demo"})
    run_context = {"demo_ratio": "demo_ratio", "seed": "seed"}
    """Configuration filled from the run (:class:`~tide_plugin.hookspecs.RunContext`)."""
    salt = 0x636F6D7064656D6F  # "compdemo"

    def __init__(self, config: CompDemoConfig | None = None, **kwargs: Any) -> None:
        if config is not None and kwargs:
            raise TypeError("pass either a CompDemoConfig or keyword configuration, not both")
        self.config = config if config is not None else CompDemoConfig(**kwargs)
        self._init_rng(self.config.seed)

    def __repr__(self) -> str:
        return f"CompDemo({asdict(self.config)})"

    def __call__(self, batch: DistillBatch) -> DistillBatch:
        if not isinstance(batch, DistillBatch):
            raise TypeError(
                f"comp_demo takes a DistillBatch from an earlier stage, got {type(batch).__name__}; "
                "the chain must be distill_pad, noise, comp_demo"
            )
        if batch.masked is None or batch.teacher_masked is None or batch.teacher_noisy_ids is None:
            raise ValueError("comp_demo needs a noised batch (masked, teacher_masked, teacher_noisy_ids): run noise first")
        if batch.teacher_noisy_ids.shape[0] != 1:
            raise ValueError(
                f"comp_demo expects one teacher view, got {batch.teacher_noisy_ids.shape[0]}: was it applied twice?"
            )
        g = self.next_generator()
        r = float(self.config.demo_ratio)
        strategy = get_pipeline(batch.pipeline)
        a_teacher = strategy.demo_split(batch, r, g)
        a_teacher = a_teacher & batch.teacher_masked
        b_teacher = batch.teacher_masked & ~a_teacher
        noisy = batch.teacher_noisy_ids[0]
        clean, _ = strategy.teacher_clean(batch)
        view1 = torch.where(b_teacher, noisy, clean)
        view2 = torch.where(a_teacher, noisy, clean)
        batch.teacher_noisy_ids = torch.stack([view1, view2])
        batch.teacher_view_index = a_teacher.long()
        batch.stats["demo_a_tokens"] = float(a_teacher.sum())
        batch.stats["demo_b_tokens"] = float(b_teacher.sum())
        return batch


@hookimpl
def tide_plugin_collators() -> list[PluginSpec]:
    return [
        PluginSpec(
            name="comp_demo",
            factory=CompDemo,
            summary="CompDemo: two complementary teacher views (A revealed / B revealed) of the masked set",
            aliases=("use_comp_demo",),
            config_cls=CompDemoConfig,
        )
    ]
