"""The distillation trainer on dllm's ``BD3LMTrainer``.

dllm users keep their trainer class (its callbacks, its metrics meter, its
``BD3LMConfig`` fields) and get TIDE's ``compute_loss``: :class:`DistillLossMixin`
comes first in the MRO, so the student forward, teacher adapter, objectives and
logging are exactly those of :class:`~tide_plugin.training.DistillBD3LMTrainer`.

:func:`tide_plugin.training.trainer_class` picks this class when ``import dllm``
works (dllm pins transformers 4.57). :class:`~tide_plugin.training.DistillConfig`
carries every attribute dllm's ``MDLMTrainer`` / ``BD3LMTrainer`` read in their
``__init__`` (``time_epsilon``, ``loss_weight_type``, ``loss_norm_type``,
``right_shift_logits``, ``block_size``), so the same config drives both;
:class:`DllmDistillConfig` is also offered for code that wants dllm's
``BD3LMConfig`` as a base (its defaults corrected: no evaluation, no reporting,
no bf16 on CPU, full checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..batch import PipelineInfo
from ..training.config import DistillArguments, check_training_values
from ..training.loss import DistillLossMixin, dllm_nll_update
from .dllm_schedulers import as_masking_schedule, dllm_scheduler_of, drive_noise

try:
    from dllm.core.trainers import BD3LMConfig, BD3LMTrainer
except Exception as exc:  # dllm missing, or broken under this transformers version
    raise ImportError(
        "tide_plugin.integrations.dllm needs dllm (install it from its source; it runs on transformers 4.57.x): "
        f"{type(exc).__name__}: {exc}"
    ) from exc


@dataclass
class DllmDistillConfig(DistillArguments, BD3LMConfig):
    """dllm's ``BD3LMConfig`` plus the distillation fields, with sane defaults on top
    of dllm's (which evaluate every 10% of training, report to wandb, train in bf16
    and save model-only checkpoints that cannot be resumed)."""

    output_dir: str | None = field(default="runs/distill")
    report_to: str | None = field(default="none")
    eval_strategy: str = field(default="no")
    bf16: bool = field(default=False)
    save_only_model: bool = field(default=False)
    save_steps: float = field(default=500)
    logging_steps: float = field(default=10)
    remove_unused_columns: bool = field(default=False)
    learning_rate: float = field(default=5e-5)

    def __post_init__(self) -> None:
        check_training_values(self)
        super().__post_init__()
        self._distill_post_init()


class DllmDistillBD3LMTrainer(DistillLossMixin, BD3LMTrainer):
    """TIDE distillation on dllm's ``BD3LMTrainer``; arguments as
    :class:`~tide_plugin.training.DistillBD3LMTrainer`, plus dllm's ``scheduler``.

    ``scheduler`` (a dllm alpha scheduler or its name) drives the ``noise`` stage's
    masking exactly (:func:`~tide_plugin.integrations.dllm_schedulers.drive_noise`;
    refused in one line where the chain has no such stage). Without it the masking
    schedule is ``args.masking_schedule`` and ``self.scheduler`` the dllm scheduler
    with the same ``alpha(t)``.

    dllm's own metrics (``nll``, ``ppl`` and their ``eval_`` forms, reported by dllm's
    callback when the trainer evaluates) are fed every step as dllm feeds them
    (:func:`~tide_plugin.training.loss.dllm_nll_update`)."""

    def __init__(
        self, *args: Any, teacher: Any, objective: Any, pipeline_info: PipelineInfo, scheduler: Any = None,
        projection: Any = None, **kwargs: Any,
    ):
        schedule = None if scheduler is None else as_masking_schedule(scheduler)
        super().__init__(*args, scheduler=None if schedule is None else schedule.scheduler, **kwargs)
        if schedule is not None:
            drive_noise(self.data_collator, schedule, self.args)
        else:
            self.scheduler = dllm_scheduler_of(self.data_collator)
        self.setup_distillation(teacher=teacher, objective=objective, pipeline_info=pipeline_info,
                                projection=projection)

    def record_nll(self, training: bool, row_nll: Any, maskable: Any) -> None:
        value, weight = dllm_nll_update(row_nll, maskable)
        self.meter.update(split="train" if training else "eval", value=value, weight=weight)
