"""The distillation loss for any ``transformers.Trainer``: :class:`DistillLossMixin`
(``compute_loss``, logging, resume, saving), the DataLoader collate wrapper, and
:class:`DistillBD3LMTrainer`.

One training step (DESIGN "data flow")::

    DistillBatch (collator chain: distill_pad -> noise [-> comp_demo])
      -> student BD3LM forward on x_t ⊕ x0, logits of the x_t half   [b, L, V_S]
      -> teacher adapter forward on every view, merged               [b, L_T, V_T]
         (fused output layer, the default: hidden states [b, L, H] and the output
         projections instead; CE and objectives project only the rows they read)
      -> DistillInputs(progress = global_step / max_steps)
      -> objective parts (already weighted)
      loss = ce_weight * CE + sum(parts)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import Tensor

from ..batch import DistillBatch, DistillInputs, PipelineInfo
from ..bd3lm import bd3lm_ce, block_diffusion_logits, unwrap_model
from ..checkpoints import TIDE_CONFIG_NAME
from ..heads import block_diffusion_projected, fused_path_problem

logger = logging.getLogger(__name__)


def _distill_batch(inputs: Any) -> DistillBatch:
    if isinstance(inputs, DistillBatch):
        return inputs
    if isinstance(inputs, Mapping) and isinstance(inputs.get("distill_batch"), DistillBatch):
        return inputs["distill_batch"]
    raise TypeError(
        f"the distillation trainer expects a DistillBatch (from the collator chain), got {type(inputs).__name__}"
    )


def _zero3(args: Any) -> bool:
    config = getattr(args, "hf_deepspeed_config", None)
    return bool(config is not None and config.is_zero3())


class DistillCollator:
    """DataLoader ``collate_fn``: rows -> ``{"distill_batch": DistillBatch}`` (a mapping,
    so the Trainer's input preparation leaves the typed batch intact)."""

    def __init__(self, chain: Any):
        self.chain = chain

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, DistillBatch]:
        return {"distill_batch": self.chain(rows)}


class DistillLossMixin:
    """``compute_loss`` and logging for any ``transformers.Trainer`` subclass.

    Call :meth:`setup_distillation` after ``Trainer.__init__``.
    """

    teacher: Any
    objective: Any

    def setup_distillation(self, *, teacher: Any, objective: Any, pipeline_info: PipelineInfo) -> None:
        args = self.args
        self.teacher = teacher
        self.objective = objective
        self.pipeline_info = pipeline_info
        objective.check_pipeline(pipeline_info)  # fail when built, not at step 1
        device = torch.device(args.teacher_device) if getattr(args, "teacher_device", None) else args.device
        if hasattr(teacher, "to") and not getattr(teacher, "_placed", False):
            teacher.to(device)
        # We normalise the CE term ourselves (get_batch_samples counts the window), so the
        # Trainer must not count labels or skip its division by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        if hasattr(self, "loss_is_scaled_for_ga"):
            self.loss_is_scaled_for_ga = False
        self._tide_fused = False
        if getattr(args, "fused_output_layer", False):
            problem = fused_path_problem(unwrap_model(self.model), teacher, objective)
            if getattr(self, "is_fsdp_enabled", False):
                problem = "FSDP shards the student's output layer outside its forward"
            elif getattr(self, "is_deepspeed_enabled", False) and _zero3(args):
                problem = "DeepSpeed ZeRO-3 partitions the student's output layer outside its forward"
            self._tide_fused = problem is None
            if problem is not None:
                logger.warning("fused output layer off (full [b, L, V] logits this run): %s", problem)
        self._tide_window: tuple[Tensor, Tensor] | None = None
        self._tide_sums: dict[str, Tensor] = {}
        self._tide_count = 0

    # -- counting the gradient-accumulation window -----------------------------------------
    def get_batch_samples(self, epoch_iterator, num_batches, *args, **kwargs):
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, *args, **kwargs)
        device = self.args.device
        counts = torch.zeros(2, dtype=torch.float64, device=device)
        for sample in batch_samples:
            try:
                b = _distill_batch(sample)
            except TypeError:
                continue
            # device-side arithmetic only: no host sync here or per micro-step
            counts[0] += (b.labels != -100).sum().to(device)
            counts[1] += b.batch_size
        micro = max(len(batch_samples), 1)
        world = self.accelerator.num_processes
        if world > 1:
            counts = self.accelerator.gather(counts[None]).sum(0)
        # Denominator per micro-batch such that, after the Trainer divides by the
        # accumulation steps and DDP averages over ranks, the gradient is sum / N_global
        # (max(1, .): a window without any target contributes 0, not NaN).
        window = counts.clamp_min(1.0) / (micro * world)
        self._tide_window = (window[0].float(), window[1].float())
        return batch_samples, num_items

    # -- the step -----------------------------------------------------------------------
    def distill_forward(self, model: torch.nn.Module, batch: DistillBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """``(loss, parts)``: parts holds ``ce`` (per micro-batch normalisation, for
        logging) and every objective part, all scalars with the graph."""
        args = self.args
        if batch.noisy_input_ids is None or batch.masked is None:
            raise ValueError("the batch is not noised: put 'noise' in the collator chain")
        fused = getattr(self, "_tide_fused", False)
        forward = block_diffusion_projected if fused else block_diffusion_logits
        student_logits = forward(
            model,
            batch.noisy_input_ids,
            batch.input_ids,
            block_size=int(args.block_size),
            attention_mask=batch.attention_mask,
        )
        maskable = batch.labels != -100
        weight = batch.ce_weight if args.loss_weight_type == "scheduler" else None
        denominator = None
        if model.training and self._tide_window is not None:
            denominator = self._tide_window[0] if args.loss_norm_type == "token" else self._tide_window[1]
        teacher_logits = self.teacher.projected_logits(batch) if fused else self.teacher(batch)
        progress = self.state.global_step / max(self.state.max_steps, 1)
        inputs = DistillInputs(
            batch=batch,
            student_logits=student_logits,
            teacher_logits=teacher_logits,
            progress=progress,
            shared_vocab_size=args.shared_vocab_size,
        )
        parts = self.objective(inputs)  # before CE: a token objective computes CE's rows in its pass
        ce = bd3lm_ce(
            student_logits,
            batch.input_ids,
            masked=batch.masked,
            maskable=maskable,
            weight=weight,
            norm=args.loss_norm_type,
            denominator=denominator,
        )
        loss = ce * float(args.ce_weight)
        for value in parts.values():
            loss = loss + value
        logged: dict[str, Tensor] = {"ce": ce.detach()}
        if denominator is not None:  # report CE with this micro-batch's own normalisation
            local = maskable.sum().clamp_min(1) if args.loss_norm_type == "token" else batch.batch_size
            logged["ce"] = ce.detach() * (denominator / local)
        logged.update({k: v.detach() for k, v in parts.items()})
        for name, lam in self._lambdas(inputs).items():
            logged[name] = lam
        return loss, logged

    def _lambdas(self, inputs: DistillInputs) -> dict[str, Tensor]:
        comps = getattr(self.objective, "components", [self.objective])
        out = {}
        for comp in comps:
            schedule = getattr(comp, "schedule", None)
            if schedule is not None and hasattr(schedule, "lambda_") and inputs.batch.t is not None:
                out[f"lambda/{comp.name}"] = schedule.lambda_(inputs.progress, inputs.batch.t).float().mean().detach()
        return out

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None, **kwargs):  # noqa: ARG002
        batch = _distill_batch(inputs).to(self.args.device)
        loss, logged = self.distill_forward(model, batch)
        if model.training:
            for k, v in logged.items():
                v = v.float()
                self._tide_sums[k] = self._tide_sums[k] + v if k in self._tide_sums else v
            self._tide_count += 1
            self._tide_progress = self.state.global_step / max(self.state.max_steps, 1)
        return (loss, {"parts": logged}) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self._tide_count:
            keys = list(self._tide_sums)
            values = (torch.stack([self._tide_sums[k] for k in keys]) / self._tide_count).tolist()  # one sync
            for k, v in zip(keys, values):
                logs[k] = float(v)
            logs["progress"] = float(getattr(self, "_tide_progress", 0.0))
            self._tide_sums, self._tide_count = {}, 0
        super().log(logs, *args, **kwargs)

    # -- resume: continue the collators' random streams ------------------------------------
    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint:
            ckpt = resume_from_checkpoint
            if ckpt is True or ckpt == "True":
                from transformers.trainer_utils import get_last_checkpoint

                ckpt = get_last_checkpoint(self.args.output_dir)
            state_file = Path(str(ckpt)) / "trainer_state.json"
            if ckpt and state_file.exists():
                step = int(json.loads(state_file.read_text()).get("global_step", 0))
                self._advance_collators(step * int(self.args.gradient_accumulation_steps))
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _advance_collators(self, batches_done: int) -> None:
        """The noise and CompDemo stages seed each call from a call counter; a resumed run
        skips the batches already seen without collating them, so move the counters on."""
        chain = getattr(self.data_collator, "chain", None)
        for stage in getattr(chain, "stages", []):
            if hasattr(stage, "calls"):
                stage.calls = batches_done

    # -- saving ---------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict=state_dict)
        out = Path(output_dir or self.args.output_dir)
        info = tide_config(self.args, unwrap_model(self.model), getattr(self, "processing_class", None))
        (out / TIDE_CONFIG_NAME).write_text(json.dumps(info, indent=2) + "\n")


def tide_config(args: Any, model: torch.nn.Module, tokenizer: Any = None) -> dict[str, Any]:
    """What a saved student needs for sampling and evaluation."""
    mask_id = getattr(getattr(model, "config", None), "mask_token_id", None)
    if mask_id is None and tokenizer is not None:
        mask_id = getattr(tokenizer, "mask_token_id", None)
    return {
        "mask_token_id": mask_id,
        "block_size": int(args.block_size),
        "pipeline": args.pipeline,
        "objective": args.objective,
        "masking_schedule": args.masking_schedule,
        "format": "tide-bd3lm-student/1",
    }


class DistillBD3LMTrainer(DistillLossMixin, transformers.Trainer):
    """BD3LM distillation on ``transformers.Trainer`` (accelerate inside: DDP, FSDP, DeepSpeed).

    :param teacher: a teacher adapter (:func:`tide_plugin.get_teacher`).
    :param objective: an objective (:func:`tide_plugin.get_objective`).
    :param pipeline_info: what the data pipeline provides (checked by the objective now).
    Other arguments are ``transformers.Trainer``'s.
    """

    def __init__(self, *args, teacher: Any, objective: Any, pipeline_info: PipelineInfo, **kwargs):
        super().__init__(*args, **kwargs)
        self.setup_distillation(teacher=teacher, objective=objective, pipeline_info=pipeline_info)
