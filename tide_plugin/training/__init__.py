"""Training: configuration, the loss mixin and trainer, builders, the run report.

Only this package, :mod:`tide_plugin.integrations`, :mod:`tide_plugin.study` and
:mod:`tide_plugin.cli` know a ``transformers.Trainer`` (docs/architecture.md#rules-of-the-house).
"""

from .builders import build_collator, build_trainer, dllm_available, run_projection, trainer_class
from .config import DistillArguments, DistillConfig
from .loss import DistillBD3LMTrainer, DistillCollator, DistillLossMixin, tide_config
from .plan import RunPlan, TeacherSettings, plan_run
from .report import write_metrics

__all__ = [
    "DistillArguments",
    "DistillBD3LMTrainer",
    "DistillCollator",
    "DistillConfig",
    "DistillLossMixin",
    "RunPlan",
    "TeacherSettings",
    "build_collator",
    "build_trainer",
    "dllm_available",
    "plan_run",
    "run_projection",
    "tide_config",
    "trainer_class",
    "write_metrics",
]
