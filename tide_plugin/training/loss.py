"""The distillation loss for any ``transformers.Trainer``: :class:`DistillLossMixin`
(``compute_loss``, logging, resume, saving), the DataLoader collate wrapper, and
:class:`DistillBD3LMTrainer`.

One training step (docs/architecture.md#the-training-step)::

    DistillBatch (collator chain: distill_pad -> noise [-> comp_demo])
      -> student BD3LM forward on x_t ⊕ x0, logits of the x_t half   [b, L, V_S]
      -> teacher adapter forward on every view, merged               [b, L_T, V_T]
         (fused output layer, the default: hidden states [b, L, H] and the output
         projections instead; CE and objectives project only the rows they read)
      -> the student's gold log-probs at CE's rows, once               [b, L]
      -> DistillInputs(progress = global_step / max_steps, those gold log-probs)
      -> objective parts (already weighted): sums over their units
      -> CE: a sum over its unit, from the same gold log-probs
      loss = (ce_weight * CE + sum(parts)), each divided once by its unit's count
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import Tensor

from ..batch import DistillBatch, DistillInputs, PipelineInfo
from ..bd3lm import bd3lm_nll, block_diffusion_logits, ce_sum, unwrap_model
from ..checkpoints import TIDE_CONFIG_NAME, apply_layout, layout_of
from ..heads import block_diffusion_projected, fused_path_problem
from ..hookspecs import ResumableStageProtocol
from ..logits import gold_log_probs
from .normalise import (
    ce_unit,
    count_units,
    local_denominators,
    normalise,
    part_units,
    window_denominators,
    window_units,
)

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


def eval_collator(collator: Any) -> Any:
    """The collate function for evaluation: ``collator`` with a fresh copy of every stage
    that has a random stream (noise, CompDemo), restarted at batch 0.

    Evaluation then draws its own noise: evaluating mid-run does not advance the training
    stream (a run with evaluation trains on the same noise as one without and resumes
    bit-exactly), and every evaluation of a run scores the same noise (its ``eval_loss``
    values compare like with like). Stages without a stream are shared, not copied."""
    chain = getattr(collator, "chain", None)
    if chain is None or not hasattr(chain, "stages"):
        return collator
    stages = []
    for stage in chain.stages:
        if isinstance(stage, ResumableStageProtocol):
            stage = copy.deepcopy(stage)
            stage.resume(0)
        stages.append(stage)
    twin = copy.copy(chain)
    twin.stages = stages
    return type(collator)(twin)


class DistillLossMixin:
    """``compute_loss`` and logging for any ``transformers.Trainer`` subclass.

    Call :meth:`setup_distillation` after ``Trainer.__init__``.
    """

    teacher: Any
    objective: Any

    def setup_distillation(
        self, *, teacher: Any, objective: Any, pipeline_info: PipelineInfo, projection: Any = None
    ) -> None:
        """:param projection: the vocabulary projection ``W`` (a
        :class:`~tide_plugin.alignment.projection.VocabProjection`) for objectives that
        require ``projection``; moved to the student's device and passed as
        ``DistillInputs.projection`` every step."""
        args = self.args
        self.teacher = teacher
        self.objective = objective
        self.pipeline_info = pipeline_info
        self.projection = projection.to(args.device) if projection is not None else None
        objective.check_pipeline(pipeline_info)  # fail when built, not at step 1
        device = torch.device(args.teacher_device) if getattr(args, "teacher_device", None) else args.device
        if teacher is None and getattr(objective, "reads_teacher", True):
            name = getattr(objective, "name", objective)
            raise ValueError(f"objective {name!r} reads the teacher, but no teacher was given")
        if teacher is not None:
            teacher.to(device)
        # We normalise the CE term ourselves (get_batch_samples counts the window), so the
        # Trainer must not count labels or skip its division by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        if hasattr(self, "loss_is_scaled_for_ga"):
            self.loss_is_scaled_for_ga = False
        self._tide_units = part_units(objective)  # part -> unit; fails when built, not at step 1
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
        self._tide_window: dict[str, Tensor] | None = None
        self._tide_sums: dict[str, Tensor] = {}
        self._tide_stats: dict[str, Any] = {}
        self._tide_count = 0

    # -- counting the gradient-accumulation window -----------------------------------------
    def get_batch_samples(self, epoch_iterator, num_batches, *args, **kwargs):
        """Count every term's units (CE's and each objective part's) over the window and
        all ranks, on the device: no host sync here or per micro-step (docs/method.md#normalisation, ours)."""
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, *args, **kwargs)
        batches = []
        for sample in batch_samples:
            try:
                batches.append(_distill_batch(sample))
            except TypeError:
                continue
        units = window_units(self._tide_units)
        counts = count_units(batches, units, self.args.device)
        world = self.accelerator.num_processes
        if world > 1:
            counts = self.accelerator.gather(counts[None]).sum(0)
        denominators = window_denominators(counts, len(batch_samples), world)
        self._tide_window = dict(zip(units, denominators.unbind()))
        return batch_samples, num_items

    # -- the step -----------------------------------------------------------------------
    def distill_forward(self, model: torch.nn.Module, batch: DistillBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """``(loss, logged)``. The objective's parts and CE are sums over their units
        (docs/method.md#normalisation), each divided once: ``loss`` (trained on) by the
        window's counts that :meth:`get_batch_samples` gathered, or outside training by
        the micro-batch's own; ``logged`` holds ``ce`` and every part from the same sums
        divided by the micro-batch's own counts (what the reference logs; detached
        scalars), and the objective's metrics (``lambda/<objective>``)."""
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
        if self.teacher is None:  # CE only (docs/method.md#student-forward): no teacher forward
            teacher_logits = None
        else:
            teacher_logits = self.teacher.projected_logits(batch) if fused else self.teacher(batch)
        # The student's gold log-probs at CE's rows, computed once: CE reads them, and so
        # do chunk objectives (their tokens are masked and maskable).
        ce_rows = batch.masked & maskable
        gold = gold_log_probs(student_logits, batch.input_ids, ce_rows)
        progress = self.state.global_step / max(self.state.max_steps, 1)
        inputs = DistillInputs(
            batch=batch,
            student_logits=student_logits,
            teacher_logits=teacher_logits,
            progress=progress,
            shared_vocab_size=args.shared_vocab_size,
            projection=getattr(self, "projection", None),
            student_gold_log_probs=(gold, ce_rows),
        )
        sums = dict(self.objective(inputs))
        weight = batch.ce_time_weight if args.ce_weighting == "elbo" else None
        row_nll = bd3lm_nll(student_logits, batch.input_ids, masked=batch.masked, maskable=maskable, weight=weight,
                            gold=gold)
        self.record_nll(model.training, row_nll.detach(), maskable)
        units = {**self._tide_units, "ce": ce_unit(args.loss_norm_type)}
        if "ce" in sums:
            raise ValueError("an objective part may not be named 'ce' (the CE term's name)")
        sums["ce"] = ce_sum(row_nll, maskable, norm=args.loss_norm_type)
        local = local_denominators(batch, sorted(set(units.values())))
        window = self._tide_window if model.training else None
        own = normalise(sums, units, local)  # the micro-batch's own: logged, and trained outside a window
        trained = own if window is None else normalise(sums, units, window)
        logged = {k: v.detach() for k, v in own.items()}
        logged = {"ce": logged.pop("ce"), **logged}
        logged.update({k: v.detach() for k, v in self.objective.metrics(inputs).items()})  # e.g. lambda/tidal
        loss = trained.pop("ce") * float(args.ce_weight)
        for value in trained.values():
            loss = loss + value
        return loss, logged

    def record_nll(self, training: bool, row_nll: Tensor, maskable: Tensor) -> None:
        """Called every step with the CE numerator ``[b]`` (:func:`~tide_plugin.bd3lm.bd3lm_nll`,
        detached) and ``maskable`` ``[b, L]``: a hook for trainers that keep their own
        metrics (the dllm-based trainer feeds dllm's NLL/PPL meter). Nothing by default."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None, **kwargs):  # noqa: ARG002
        batch = _distill_batch(inputs).to(self.args.device)
        loss, logged = self.distill_forward(model, batch)
        if model.training:
            for k, v in logged.items():
                v = v.float()
                self._tide_sums[k] = self._tide_sums[k] + v if k in self._tide_sums else v
            for k, v in batch.stats.items():  # host floats from the collators: no sync
                self._tide_stats[k] = self._tide_stats.get(k, 0.0) + v
            self._tide_count += 1
            self._tide_progress = self.state.global_step / max(self.state.max_steps, 1)
        return (loss, {"parts": logged}) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """At logging steps: each part's mean over the micro-batches since the last log
        (and over ranks), and ``stats/<name>``: the collators' counters (dropped pairs and
        chunks, masked tokens, CompDemo A/B sizes, truncated examples, ...) summed over
        those batches and all ranks. One device sync."""
        if "loss" in logs and self._tide_count:
            logs.update(self._tide_logs())
            logs["progress"] = float(getattr(self, "_tide_progress", 0.0))
            self._tide_sums, self._tide_stats, self._tide_count = {}, {}, 0
        super().log(logs, *args, **kwargs)

    def _tide_logs(self) -> dict[str, float]:
        device = self.args.device
        means = [self._tide_sums[k].to(device) / self._tide_count for k in self._tide_sums]
        stats = [torch.as_tensor(v, dtype=torch.float32).to(device) for v in self._tide_stats.values()]
        values = torch.stack(means + stats) if means or stats else torch.zeros(0, device=device)
        world = self.accelerator.num_processes
        if world > 1:  # every rank logs the same keys (one pipeline), so the shapes agree
            values = self.accelerator.reduce(values, reduction="sum")
            values[: len(means)] /= world
        keys = list(self._tide_sums) + [f"stats/{k}" for k in self._tide_stats]
        return dict(zip(keys, (float(v) for v in values.tolist())))  # the one sync

    # -- evaluation -------------------------------------------------------------------------
    heldout_scorer: Any = None
    """``score(model) -> BpbResult``, run by :meth:`evaluate` (``build_trainer(heldout=...)``)."""

    def get_eval_dataloader(self, eval_dataset=None):
        """``Trainer.get_eval_dataloader`` with :func:`eval_collator`: evaluation batches
        never draw from the training noise stream."""
        train_collator = self.data_collator
        self.data_collator = eval_collator(train_collator)
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):  # noqa: ARG002
        """Evaluation step: the loss on the batch (CE and the objective's sums, each
        divided by the micro-batch's own count), no logits (they are [b, L, V])."""
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluate(self, *args, **kwargs):
        """``Trainer.evaluate`` (``eval_loss``; dllm's trainer adds its ``eval_nll`` /
        ``eval_ppl``), then ``<prefix>_heldout_bpb`` and its standard error when a
        held-out scorer is set, logged and returned."""
        metrics = super().evaluate(*args, **kwargs)
        if self.heldout_scorer is not None:
            prefix = kwargs.get("metric_key_prefix", args[2] if len(args) > 2 else "eval")
            model = unwrap_model(self.model)
            was_training = model.training
            result = self.heldout_scorer(model)
            model.train(was_training)
            extra = {f"{prefix}_heldout_bpb": float(result.bpb), f"{prefix}_heldout_bpb_se": float(result.se)}
            metrics.update(extra)
            self.log(extra)
        return metrics

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

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """A checkpoint saves a tied weight once (``lm_head.weight`` is the embedding's):
        its other name is not a missing key. Retie, and report only real ones."""
        names: dict[int, list[str]] = {}
        for name, param in self.model.named_parameters(remove_duplicate=False):
            names.setdefault(id(param), []).append(name)
        tied = {n for group in names.values() if len(group) > 1 for n in group}
        missing = [k for k in load_result.missing_keys if k not in tied]
        if len(missing) < len(load_result.missing_keys):
            self.model.tie_weights()
        super()._issue_warnings_after_load(type(load_result)(missing, load_result.unexpected_keys))

    def _advance_collators(self, batches_done: int) -> None:
        """A resumed run skips the batches already seen without collating them: tell
        every stage with a random stream (``resume``) where the run stands."""
        chain = getattr(self.data_collator, "chain", None)
        for stage in getattr(chain, "stages", []):
            if isinstance(stage, ResumableStageProtocol):
                stage.resume(batches_done)

    # -- saving ---------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict=state_dict)
        out = Path(output_dir or self.args.output_dir)
        apply_layout(out, layout_of(unwrap_model(self.model)))  # A2D stays A2D (docs/method.md#teacher-adapters)
        info = tide_config(self.args, unwrap_model(self.model), getattr(self, "processing_class", None))
        (out / TIDE_CONFIG_NAME).write_text(json.dumps(info, indent=2) + "\n")


def dllm_nll_update(row_nll: Tensor, maskable: Tensor) -> tuple[Tensor, Tensor]:
    """``(value, weight)`` for one step of dllm's NLL/PPL meter, filled as dllm's own
    ``MDLMTrainer``/``BD3LMTrainer`` fill it.

    dllm updates a weighted mean with the per-token NLL ``CE * w(t) * masked`` ``[b, L]``
    and the weight ``maskable`` ``[b, L]``; its NLL is ``sum(NLL) / sum(maskable)`` over all
    updates (and ranks), its PPL ``exp(NLL)``. A weighted mean keeps only
    ``sum(value * weight)`` and ``sum(weight)``, so the pair ``(sum / max(1, n), n)`` (``n``
    the maskable count; ``max(1, .)``: a step without targets adds 0 to both) accumulates
    the same, without a ``[b, L]`` tensor.

    :param row_nll: ``[b]`` float32 (:func:`~tide_plugin.bd3lm.bd3lm_nll`).
    :param maskable: ``[b, L]`` bool. :return: two float32 scalars.
    """
    n = maskable.sum().float()
    return row_nll.sum().float() / n.clamp_min(1), n


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
    :param projection: the vocabulary projection ``W`` (objectives that require ``projection``).
    Other arguments are ``transformers.Trainer``'s.
    """

    def __init__(self, *args, teacher: Any, objective: Any, pipeline_info: PipelineInfo, projection: Any = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.setup_distillation(teacher=teacher, objective=objective, pipeline_info=pipeline_info,
                                projection=projection)
