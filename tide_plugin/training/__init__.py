"""Training: configuration, the loss mixin and trainer, builders, the run report.

Only this package, :mod:`tide_plugin.integrations`, :mod:`tide_plugin.study` and
:mod:`tide_plugin.cli` know a ``transformers.Trainer`` (docs/architecture.md#rules-of-the-house).
"""

from .builders import build_collator, build_trainer, dllm_available, run_projection, trainer_class
from .config import DistillArguments, DistillConfig
from .loss import DistillBD3LMTrainer, DistillCollator, DistillLossMixin, tide_config
from .report import write_metrics

__all__ = [
    "DistillArguments",
    "DistillBD3LMTrainer",
    "DistillCollator",
    "DistillConfig",
    "DistillLossMixin",
    "build_collator",
    "build_trainer",
    "dllm_available",
    "run_projection",
    "tide_config",
    "trainer_class",
    "write_metrics",
]
