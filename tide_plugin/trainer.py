"""Distillation trainer: ``DistillConfig``, the ``compute_loss`` mixin,
``DistillBD3LMTrainer`` (on ``transformers.Trainer``) and ``tide distill``.

One training step (DESIGN "data flow")::

    DistillBatch (collator chain: distill_pad -> noise [-> comp_demo])
      -> student BD3LM forward on x_t ⊕ x0, logits of the x_t half   [b, L, V_S]
      -> teacher adapter forward on every view, merged               [b, L_T, V_T]
      -> DistillInputs(progress = global_step / max_steps)
      -> objective parts (already weighted)
      loss = ce_weight * CE + sum(parts)

The same :class:`DistillLossMixin` serves the dllm-based trainer
(:mod:`tide_plugin.integrations.dllm`), picked automatically by
:func:`trainer_class` when ``import dllm`` works.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import Tensor

from .batch import DistillBatch, DistillInputs, PipelineInfo
from .bd3lm import CONCAT_ORDERS, LOSS_NORMS, bd3lm_ce, block_diffusion_logits, unwrap_model

PIPELINES = ("same", "shared", "cross")
LOSS_WEIGHT_TYPES = ("scheduler", "uniform")
TIDAL_FIELDS = {
    "taid_lambda_init": "lambda_init",
    "taid_lambda_max": "lambda_max",
    "taid_decay": "decay",
    "taid_axis_mode": "axis",
    "taid_timestep_weight": "timestep_weight",
}
TIDE_CONFIG_NAME = "tide_config.json"
"""Written next to every saved student: what sampling/eval needs (mask id, block size)."""


def _parse_mapping(value: Any, name: str) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        try:
            out = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name} must be a JSON object, got {value!r}: {exc}") from exc
        if isinstance(out, dict):
            return out
    raise ValueError(f"{name} must be a mapping or a JSON object string, got {value!r}")


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y", "on")
    return bool(value)


@dataclass
class DistillArguments:
    """The distillation options (a mixin of dataclass fields; see :class:`DistillConfig`).

    Reference launch flags are accepted as aliases: ``distill_mode`` (``alm``,
    ``reverse_alm``, ``alm_taid``, ``kl_aligned``, ``reverse_kl_aligned``,
    ``taid_aligned``, any registered name, ``+`` composition; ``*_aligned`` selects
    the ``shared`` pipeline, chunk modes ``cross``), ``use_comp_demo``, ``demo_ratio``,
    ``alm_temperature`` (chunk objectives), ``kl_temperature`` (token objectives),
    ``taid_lambda_init`` / ``taid_lambda_max`` / ``taid_decay`` / ``taid_axis_mode`` /
    ``taid_timestep_weight`` (TIDAL), ``teacher_mask_token_id``, ``shared_vocab_size``,
    ``concat_order``.
    """

    objective: str = field(
        default="reverse_calm",
        metadata={"help": "objective names joined by '+', e.g. reverse_calm or tidal_calm+calm (aliases accepted)"},
    )
    objective_config: str | None = field(
        default=None,
        metadata={"help": 'per-objective parameters as JSON, e.g. {"reverse_calm": {"temperature": 5.0, "weight": 0.5}}'},
    )
    ce_weight: float = field(default=1.0, metadata={"help": "weight of the BD3LM CE term (0 drops it)"})
    collators: str = field(
        default="distill_pad+noise",
        metadata={"help": "collator chain, names joined by '+'; comp_demo is appended when use_comp_demo"},
    )
    collator_config: str | None = field(default=None, metadata={"help": "per-stage collator parameters as JSON"})
    teacher: str = field(default="bidirectional", metadata={"help": "teacher adapter: bidirectional | block | ..."})
    teacher_config: str | None = field(default=None, metadata={"help": "extra teacher adapter parameters as JSON"})
    teacher_mask_token_id: int | None = field(default=None, metadata={"help": "teacher mask id m_T"})
    concat_order: str | None = field(
        default=None,
        metadata={"help": "block teacher input order: xt_x0 | x0_xt (WeDLM); default the adapter's (alias wedlm: x0_xt)"},
    )
    teacher_dtype: str = field(default="auto", metadata={"help": "auto | float32 | bfloat16 | float16"})
    teacher_device: str | None = field(default=None, metadata={"help": "teacher placement; default the student's"})
    sequential_views: bool = field(default=False, metadata={"help": "run CompDemo views one after the other"})
    teacher_load_in_4bit: bool = field(default=False, metadata={"help": "4-bit teacher (needs bitsandbytes)"})
    pipeline: str | None = field(default=None, metadata={"help": "same | shared | cross (inferred when unset)"})
    shared_vocab_size: int | None = field(default=None, metadata={"help": "V_shared for token objectives"})
    block_size: int = field(default=32, metadata={"help": "BD3LM block size"})
    masking_schedule: str = field(default="linear", metadata={"help": "alpha(t): linear | cosine"})
    time_epsilon: float = field(default=1e-3, metadata={"help": "t ~ U[eps, 1)"})
    loss_weight_type: str = field(default="scheduler", metadata={"help": "CE weight: scheduler (w(t)) | uniform"})
    loss_norm_type: str = field(default="token", metadata={"help": "CE normalisation: token | sequence | batch"})
    right_shift_logits: bool = field(default=False, metadata={"help": "(dllm compatibility; must stay False)"})
    max_length: int | None = field(default=None, metadata={"help": "student truncation length"})
    teacher_max_length: int | None = field(default=None, metadata={"help": "teacher truncation length"})
    noise_seed: int | None = field(default=None, metadata={"help": "seed of the noise / CompDemo streams (default seed)"})
    # ---- reference launch flags (aliases) ----
    distill_mode: str | None = field(default=None, metadata={"help": "reference mode string (alias of --objective)"})
    use_comp_demo: bool = field(default=False, metadata={"help": "CompDemo: two complementary teacher views"})
    demo_ratio: float = field(default=0.5, metadata={"help": "CompDemo split probability r"})
    alm_temperature: float | None = field(default=None, metadata={"help": "temperature of chunk objectives"})
    kl_temperature: float | None = field(default=None, metadata={"help": "temperature of token objectives"})
    taid_lambda_init: float | None = field(default=None, metadata={"help": "TIDAL l0"})
    taid_lambda_max: float | None = field(default=None, metadata={"help": "TIDAL l1"})
    taid_decay: str | None = field(default=None, metadata={"help": "TIDAL g: cosine | linear"})
    taid_axis_mode: str | None = field(default=None, metadata={"help": "both | training_only | timestep_only"})
    taid_timestep_weight: str | None = field(default=None, metadata={"help": "uniform | midrange"})

    # -- validation and resolution ------------------------------------------------
    def _distill_post_init(self) -> None:
        if self.distill_mode:
            self.objective = self.distill_mode
        parts = [p.strip() for p in str(self.objective).split("+")]
        if not parts or any(not p for p in parts):
            raise ValueError(f"objective {self.objective!r} has an empty component; write names joined by '+'")
        self.objective = "+".join(parts)
        self.objective_config = _parse_mapping(self.objective_config, "objective_config")
        self.collator_config = _parse_mapping(self.collator_config, "collator_config")
        self.teacher_config = _parse_mapping(self.teacher_config, "teacher_config")
        self.use_comp_demo = _bool(self.use_comp_demo)
        self.sequential_views = _bool(self.sequential_views)
        if self.pipeline is None:
            self.pipeline = self.implied_pipeline()
        if self.pipeline is not None and self.pipeline not in PIPELINES:
            raise ValueError(f"pipeline {self.pipeline!r} is not one of {PIPELINES}")
        if self.concat_order is not None and self.concat_order not in CONCAT_ORDERS:
            raise ValueError(f"concat_order {self.concat_order!r} is not one of {CONCAT_ORDERS}")
        if self.loss_norm_type not in LOSS_NORMS:
            raise ValueError(f"loss_norm_type {self.loss_norm_type!r} is not one of {LOSS_NORMS}")
        if self.loss_weight_type not in LOSS_WEIGHT_TYPES:
            raise ValueError(f"loss_weight_type {self.loss_weight_type!r} is not one of {LOSS_WEIGHT_TYPES}")
        if self.masking_schedule not in ("linear", "cosine"):
            raise ValueError(f"masking_schedule {self.masking_schedule!r} is not one of ('linear', 'cosine')")
        if not 0.0 < float(self.time_epsilon) < 1.0:
            raise ValueError(f"time_epsilon {self.time_epsilon} must lie in (0, 1)")
        if int(self.block_size) <= 0:
            raise ValueError(f"block_size {self.block_size} must be a positive integer")
        if not 0.0 < float(self.demo_ratio) < 1.0:
            raise ValueError(f"demo_ratio {self.demo_ratio} must lie in (0, 1)")
        if self.ce_weight < 0:
            raise ValueError(f"ce_weight {self.ce_weight} must be >= 0")
        if _bool(self.right_shift_logits):
            raise ValueError("right_shift_logits=True is not supported: BD3LM predicts x0 at the x_t position")

    # -- what the pieces are built from -------------------------------------------------
    def implied_pipeline(self) -> str | None:
        """The pipeline the objectives' declared needs imply (third-party objectives
        included): chunks -> ``cross``, template pairs -> ``shared``, position-by-
        position token alignment -> ``same``; ``None`` when they need none of these."""
        from .registry import get_objective

        with warnings.catch_warnings():  # a probe: the trainer's own build reports composition warnings
            warnings.simplefilter("ignore", UserWarning)
            needs = get_objective(self.objective, **self.objective_kwargs()).requires
        for need, pipeline in (("chunks", "cross"), ("pairs", "shared"), ("token_alignment", "same")):
            if need in needs:
                return pipeline
        return None

    def objective_kwargs(self) -> dict[str, Any]:
        """Per-component configuration for :func:`tide_plugin.get_objective`, with the
        reference flags applied (explicit ``objective_config`` wins)."""
        from .registry import get_registry

        reg = get_registry()
        parts = self.objective.split("+")
        out: dict[str, dict[str, Any]] = {}
        for p in parts:
            info = reg.resolve("objective", p)
            cls = info.spec.config_cls
            names = {f.name for f in dataclasses.fields(cls)} if cls is not None and dataclasses.is_dataclass(cls) else set()
            cfg: dict[str, Any] = {}
            chunk_level = "chunks" in reg.build("objective", p).requires
            temp = self.alm_temperature if chunk_level else self.kl_temperature
            if temp is not None and "temperature" in names:
                cfg["temperature"] = float(temp)
            for flag, key in TIDAL_FIELDS.items():
                value = getattr(self, flag)
                if value is not None and key in names:
                    cfg[key] = value
            cfg.update(self.objective_config.get(p, {}) or self.objective_config.get(info.name, {}))
            out[p] = cfg
        unknown = set(self.objective_config) - set(parts) - {reg.resolve("objective", p).name for p in parts}
        if unknown:
            raise ValueError(f"objective_config names {sorted(unknown)}, which are not components of {self.objective!r}")
        return out if len(parts) > 1 else out[parts[0]]

    def collator_names(self) -> list[str]:
        names = [n.strip() for n in self.collators.replace(",", "+").split("+") if n.strip()]
        if self.use_comp_demo and "comp_demo" not in names:
            names.append("comp_demo")
        return names


@dataclass
class DistillConfig(DistillArguments, transformers.TrainingArguments):
    """``transformers.TrainingArguments`` plus :class:`DistillArguments`, with sane
    defaults: no evaluation, ``report_to="none"``, ``remove_unused_columns=False``,
    logging every 10 steps (transformers' own: lr 5e-5, the paper's; full checkpoints, so runs resume)."""

    output_dir: str | None = field(default="runs/distill", metadata={"help": "where checkpoints and logs go"})
    report_to: str | None = field(default="none", metadata={"help": "integrations to report to (none by default)"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "keep the distillation columns"})
    logging_steps: float = field(default=10, metadata={"help": "log every N optimizer steps"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self._distill_post_init()


# --------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------
def _distill_batch(inputs: Any) -> DistillBatch:
    if isinstance(inputs, DistillBatch):
        return inputs
    if isinstance(inputs, Mapping) and isinstance(inputs.get("distill_batch"), DistillBatch):
        return inputs["distill_batch"]
    raise TypeError(
        f"the distillation trainer expects a DistillBatch (from the collator chain), got {type(inputs).__name__}"
    )


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
        student_logits = block_diffusion_logits(
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
        ce = bd3lm_ce(
            student_logits,
            batch.input_ids,
            masked=batch.masked,
            maskable=maskable,
            weight=weight,
            norm=args.loss_norm_type,
            denominator=denominator,
        )
        teacher_logits = self.teacher(batch)
        progress = self.state.global_step / max(self.state.max_steps, 1)
        inputs = DistillInputs(
            batch=batch,
            student_logits=student_logits,
            teacher_logits=teacher_logits,
            progress=progress,
            shared_vocab_size=args.shared_vocab_size,
        )
        parts = self.objective(inputs)
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


def dllm_available() -> bool:
    try:
        import dllm  # noqa: F401
    except Exception:  # dllm missing or broken under this transformers version
        return False
    return True


def trainer_class(prefer: str = "auto") -> type:
    """``DistillBD3LMTrainer`` or, when dllm imports (``prefer`` ``auto`` or ``dllm``),
    the dllm-based one."""
    if prefer not in ("auto", "dllm", "transformers"):
        raise ValueError(f"trainer backend {prefer!r} is not one of auto, dllm, transformers")
    if prefer == "transformers" or (prefer == "auto" and not dllm_available()):
        return DistillBD3LMTrainer
    from .integrations.dllm import DllmDistillBD3LMTrainer

    return DllmDistillBD3LMTrainer


# --------------------------------------------------------------------------------------
# Building a run
# --------------------------------------------------------------------------------------
def build_collator(
    config: DistillConfig,
    *,
    student_eos_id: int,
    student_mask_id: int,
    teacher_mask_id: int | None,
    student_pad_id: int | None = None,
    teacher_pad_id: int = 0,
) -> DistillCollator:
    from .collators.chain import build_collator_chain

    seed = int(config.noise_seed if config.noise_seed is not None else config.seed)
    per_stage: dict[str, dict[str, Any]] = {}
    names = config.collator_names()
    for name in names:
        if name == "distill_pad":
            per_stage[name] = {
                "eos_id": int(student_eos_id),
                "block_size": int(config.block_size),
                "pipeline": config.pipeline,
                "pad_id": student_pad_id,
                "teacher_pad_id": int(teacher_pad_id),
                "max_length": config.max_length,
                "teacher_max_length": config.teacher_max_length,
            }
        elif name == "noise":
            per_stage[name] = {
                "mask_id": int(student_mask_id),
                "teacher_mask_id": teacher_mask_id,
                "schedule": config.masking_schedule,
                "eps": float(config.time_epsilon),
                "ce_weighting": "elbo" if config.loss_weight_type == "scheduler" else "uniform",
                "seed": seed,
            }
        elif name == "comp_demo":
            per_stage[name] = {"demo_ratio": float(config.demo_ratio), "seed": seed}
        per_stage.setdefault(name, {}).update(config.collator_config.get(name, {}))
    return DistillCollator(build_collator_chain(names, **per_stage))


def build_trainer(
    config: DistillConfig,
    *,
    student: torch.nn.Module,
    teacher_model: torch.nn.Module | str,
    train_dataset: Any,
    student_tokenizer: Any = None,
    student_mask_id: int | None = None,
    student_eos_id: int | None = None,
    backend: str = "auto",
    callbacks: Sequence[Any] | None = None,
) -> transformers.Trainer:
    """Assemble teacher adapter, objective, collator chain and trainer from ``config``."""
    from .registry import get_objective, get_teacher

    if config.pipeline is None:
        raise ValueError("config.pipeline is unset: choose same | shared | cross (or a mode that implies one)")
    tok = student_tokenizer
    mask_id = student_mask_id if student_mask_id is not None else getattr(tok, "mask_token_id", None)
    eos_id = student_eos_id if student_eos_id is not None else getattr(tok, "eos_token_id", None)
    if mask_id is None or eos_id is None:
        raise ValueError(f"student mask id ({mask_id}) and EOS id ({eos_id}) are needed; pass a tokenizer or the ids")
    teacher_kwargs: dict[str, Any] = {
        "mask_token_id": config.teacher_mask_token_id,
        "dtype": config.teacher_dtype,
        "sequential_views": config.sequential_views,
        "load_in_4bit": config.teacher_load_in_4bit,
    }
    from .registry import get_registry

    # Options the adapter's config declares (the block-diffusion layout, for one) are
    # passed through, whichever plugin provides the adapter.
    teacher_cls = get_registry().resolve("teacher", config.teacher).spec.config_cls
    teacher_fields = {f.name for f in dataclasses.fields(teacher_cls)} if dataclasses.is_dataclass(teacher_cls) else set()
    for key, value in (("concat_order", config.concat_order), ("block_size", int(config.block_size))):
        if key in teacher_fields and value is not None:
            teacher_kwargs[key] = value
    teacher_kwargs.update(config.teacher_config)
    teacher = get_teacher(config.teacher, model=teacher_model, **teacher_kwargs)
    teacher_mask = config.teacher_mask_token_id
    if teacher_mask is None:
        teacher_mask = teacher.mask_token_id if config.pipeline != "same" else mask_id
    objective_kwargs = config.objective_kwargs()
    objective = get_objective(config.objective, **objective_kwargs)
    if config.shared_vocab_size is None and objective.requires & {"token_alignment", "pairs"}:
        warnings.warn(
            "shared_vocab_size is unset: token-level objectives compare the first min(V_S, V_T) ids of both "
            "vocabularies, added tokens included; set shared_vocab_size to the ids both sides share "
            "(Qwen family: 151646, SPEC 3.1)",
            UserWarning,
            stacklevel=2,
        )
    info = PipelineInfo(pipeline=config.pipeline, shared_vocab_size=config.shared_vocab_size)
    objective.check_pipeline(info)  # before any model work
    collator = build_collator(
        config,
        student_eos_id=int(eos_id),
        student_mask_id=int(mask_id),
        teacher_mask_id=None if teacher_mask is None else int(teacher_mask),
        student_pad_id=getattr(tok, "pad_token_id", None),
    )
    student.config.mask_token_id = int(mask_id)
    student.config.block_size = int(config.block_size)
    cls = trainer_class(backend)
    kwargs: dict[str, Any] = {
        "model": student,
        "args": config,
        "train_dataset": train_dataset,
        "data_collator": collator,
        "callbacks": list(callbacks or []),
    }
    if tok is not None:
        kwargs["processing_class"] = tok
    return cls(teacher=teacher, objective=objective, pipeline_info=info, **kwargs)


# --------------------------------------------------------------------------------------
# `tide distill`
# --------------------------------------------------------------------------------------
_DEMO_RUN: dict[str, Any] = {
    # What both embedded demos share: short sequences, 30 steps at a high constant
    # learning rate, so a tiny model moves visibly within the three-minute budget.
    "max_length": 64,
    "teacher_max_length": 96,
    "block_size": 32,
    "max_steps": 30,
    "learning_rate": 2e-3,
    "warmup_steps": 0,
    "lr_scheduler_type": "constant",
    "per_device_train_batch_size": 4,
    "logging_steps": 2,
    "save_strategy": "no",
    "dataloader_pin_memory": False,
    "seed": 0,
}
PRESETS: dict[str, dict[str, Any]] = {
    # TIDE-Cross in miniature: tiny Qwen3 BD3LM student (real qwen tokenizer) <- tiny
    # Qwen3-MoE bidirectional teacher (real mistral tokenizer), Reverse CALM, chunks.
    "demo": {
        "objective": "reverse_calm",
        "pipeline": "cross",
        "teacher": "bidirectional",
        "output_dir": "runs/demo",
        **_DEMO_RUN,
    },
    # TIDE-Shared in miniature: shared vocabulary, teacher with another chat template,
    # template pairs, token TIDAL + CompDemo, block (WeDLM-style x0_xt) teacher.
    "shared": {
        "objective": "taid_aligned",
        "pipeline": "shared",
        "teacher": "block",
        "concat_order": "x0_xt",
        "use_comp_demo": True,
        "shared_vocab_size": 151646,
        "output_dir": "runs/demo-shared",
        **_DEMO_RUN,
    },
}
PRESET_MODELS = {
    "demo": {"student_tokenizer": "offline:qwen", "teacher_tokenizer": "offline:mistral", "teacher_arch": "qwen3_moe"},
    "shared": {"student_tokenizer": "offline:qwen", "teacher_tokenizer": "offline:qwen-alt-template", "teacher_arch": "qwen3"},
}
_RUN_KEYS = (
    "config",
    "preset",
    "model_name_or_path",
    "teacher_model_name_or_path",
    "student_tokenizer",
    "teacher_tokenizer",
    "data",
    "max_samples",
    "tiny_hidden_size",
    "backend",
    "attn_implementation",
)
ALT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + ' says:\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant says:\\n' }}{% endif %}"
)


def _config_parser(add_help: bool = False) -> argparse.ArgumentParser:
    return transformers.HfArgumentParser(DistillConfig, add_help=add_help)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``tide distill`` flags: every :class:`DistillConfig` field (TrainingArguments'
    included, the reference flags too) plus the run options below. Only flags given
    on the command line override the preset and the ``--config`` YAML."""
    run = parser.add_argument_group("run")
    run.add_argument("--config", default=None, help="YAML file of DistillConfig fields and run options")
    run.add_argument("--preset", default=None, help=f"one of {sorted(PRESETS)} or 'none' (default: demo)")
    run.add_argument("--model_name_or_path", default=None, help="student checkpoint (default: a tiny Qwen3)")
    run.add_argument("--teacher_model_name_or_path", default=None, help="teacher checkpoint (default: a tiny model)")
    run.add_argument("--student_tokenizer", default=None, help="tokenizer: offline:qwen, offline:mistral or a path")
    run.add_argument("--teacher_tokenizer", default=None, help="tokenizer of the teacher")
    run.add_argument("--data", default=None, help="chat JSONL (aligned in-process) or a `tide preprocess` output dir")
    run.add_argument("--max_samples", type=int, default=None, help="use only the first N conversations")
    run.add_argument("--tiny_hidden_size", type=int, default=None, help="hidden size of the tiny default models")
    run.add_argument("--backend", default=None, choices=["auto", "dllm", "transformers"], help="trainer base class")
    run.add_argument("--attn_implementation", default=None, help="student attention: sdpa | eager | flex_attention")
    hf = _config_parser()
    for action in hf._actions:  # every dataclass flag, defaults suppressed: only explicit flags reach run()
        action.default = argparse.SUPPRESS
    parser._add_container_actions(hf)


def _load_yaml(path: str) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of options, got {type(data).__name__}")
    return data


def resolve_options(args: argparse.Namespace | Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(config fields, run options)``: preset < YAML < explicit flags."""
    given = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    given = {k: v for k, v in given.items() if v is not None or k not in _RUN_KEYS}
    yaml_opts = _load_yaml(given["config"]) if given.get("config") else {}
    preset = given.get("preset") or yaml_opts.get("preset") or "demo"
    if preset != "none" and preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is not one of {sorted(PRESETS)} or 'none'")
    merged: dict[str, Any] = {}
    if preset != "none":
        merged.update(PRESETS[preset])
        merged.update(PRESET_MODELS[preset])
    explicit = {**yaml_opts, **{k: v for k, v in given.items() if k != "config"}}
    if ("objective" in explicit or "distill_mode" in explicit) and "pipeline" not in explicit:
        merged.pop("pipeline", None)  # let the chosen objective imply its pipeline
    if "num_train_epochs" in explicit and "max_steps" not in explicit:
        merged.pop("max_steps", None)  # epochs asked for: the preset's step cap must not win
    merged.update(explicit)
    merged["preset"] = preset
    names = {f.name for f in dataclasses.fields(DistillConfig) if f.init}
    run_keys = set(_RUN_KEYS) | {"teacher_arch"}
    unknown = set(merged) - names - run_keys
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; see `tide distill --help`")
    return {k: v for k, v in merged.items() if k in names}, {k: v for k, v in merged.items() if k in run_keys}


def _tokenizer(spec: str) -> Any:
    if spec == "offline:qwen-alt-template":  # the same vocabulary, another chat template
        import copy

        from .offline import tokenizer

        tok = copy.deepcopy(tokenizer("qwen"))
        tok.chat_template = ALT_TEMPLATE
        return tok
    from .alignment.preprocess import load_tokenizer

    return load_tokenizer(spec)


def _special_ids(tok: Any) -> dict[str, int]:
    """The tokenizer's special ids for a tiny model's config (so saving does not have
    to reconcile the model's generation config with the tokenizer)."""
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    return {k: v for k, v in ids.items() if v is not None}


def _student(run: Mapping[str, Any], tok: Any, config: DistillConfig) -> torch.nn.Module:
    impl = run.get("attn_implementation") or "sdpa"
    if run.get("model_name_or_path"):
        path = run["model_name_or_path"]
        if not Path(path).is_dir():
            raise FileNotFoundError(
                f"student checkpoint {path!r} is not a local directory: models are loaded from local folders "
                "only (download the checkpoint first and pass its folder)"
            )
        return transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation=impl, local_files_only=True)
    from .tiny import tiny_qwen3

    return tiny_qwen3(
        len(tok),
        hidden_size=int(run.get("tiny_hidden_size") or 32),
        attn_implementation=impl,
        seed=config.seed,
        **_special_ids(tok),
    )


def _teacher(run: Mapping[str, Any], tok: Any, config: DistillConfig) -> torch.nn.Module | str:
    if run.get("teacher_model_name_or_path"):
        return run["teacher_model_name_or_path"]
    from .tiny import tiny_qwen3, tiny_qwen3_moe

    build = tiny_qwen3_moe if run.get("teacher_arch", "qwen3_moe") == "qwen3_moe" else tiny_qwen3
    return build(len(tok), hidden_size=int(run.get("tiny_hidden_size") or 32), seed=config.seed + 1, **_special_ids(tok))


def _dataset(run: Mapping[str, Any], config: DistillConfig, student_tok: Any, teacher_tok: Any) -> Any:
    from .alignment.preprocess import DEMO_DATA, load_jsonl, preprocess

    data = run.get("data")
    if data and Path(data).is_dir():
        import datasets

        ds = datasets.load_from_disk(data)
    else:
        rows = load_jsonl(data or DEMO_DATA)
        if run.get("max_samples"):
            rows = rows[: int(run["max_samples"])]
        if config.pipeline not in ("cross", "shared"):
            raise ValueError(f"raw chat data needs the cross or shared pipeline, got {config.pipeline!r}")
        ds, report = preprocess(
            rows,
            teacher_tok,
            student_tok,
            pipeline=config.pipeline,
            max_length=config.max_length,
            teacher_max_length=config.teacher_max_length or -1,
            progress=False,
        )
        print(f"tide distill: aligned {len(ds)} of {len(rows)} conversations ({config.pipeline} pipeline)")
        if len(ds) == 0:
            raise ValueError(f"no conversation survived alignment: {report}")
    if run.get("max_samples") and len(ds) > int(run["max_samples"]):
        ds = ds.select(range(int(run["max_samples"])))
    return ds


def write_metrics(trainer: transformers.Trainer, output_dir: str | os.PathLike[str], extra: Mapping[str, Any]) -> dict:
    """``metrics.json`` (per-step history of every logged part, final values) and
    ``loss.png`` (CE and every objective part against the step)."""
    out = Path(output_dir)
    history = [h for h in trainer.state.log_history if "loss" in h]
    summary = next((h for h in reversed(trainer.state.log_history) if "train_runtime" in h), {})
    skip = {"loss", "grad_norm", "learning_rate", "epoch", "step", "progress"}
    parts = sorted({k for h in history for k in h if k not in skip and not k.startswith("lambda/")})
    metrics = {
        "history": history,
        "parts": parts,
        "final": history[-1] if history else {},
        "train": summary,
        **extra,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("tide distill: matplotlib is not installed; skipped loss.png (pip install matplotlib)")
        return metrics
    # one panel per part: CE and the objective parts live on very different scales
    fig, axes = plt.subplots(1, max(len(parts), 1), figsize=(4 * max(len(parts), 1), 3.4), squeeze=False)
    for ax, name in zip(axes[0], parts):
        steps = [h["step"] for h in history if name in h]
        ax.plot(steps, [h[name] for h in history if name in h], marker="o", markersize=3)
        ax.set_title(name)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss part")
    fig.suptitle(f"tide distill: {extra.get('objective', '')}")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=110)
    plt.close(fig)
    return metrics


def distill(options: Mapping[str, Any], run: Mapping[str, Any]) -> dict[str, Any]:
    """Run a distillation from resolved options; returns the metrics written."""
    start = time.time()
    config = DistillConfig(**options)
    student_tok = _tokenizer(run.get("student_tokenizer") or "offline:qwen")
    teacher_tok = _tokenizer(run.get("teacher_tokenizer") or "offline:mistral")
    from .alignment import resolve_mask_id

    student_mask = resolve_mask_id(student_tok)
    if config.teacher_mask_token_id is None and config.pipeline != "same":
        config.teacher_mask_token_id = resolve_mask_id(teacher_tok)
    dataset = _dataset(run, config, student_tok, teacher_tok)
    student = _student(run, student_tok, config)
    teacher = _teacher(run, teacher_tok, config)
    trainer = build_trainer(
        config,
        student=student,
        teacher_model=teacher,
        train_dataset=dataset,
        student_tokenizer=student_tok,
        student_mask_id=student_mask,
        backend=run.get("backend") or "auto",
    )
    print(
        f"tide distill: {type(trainer).__name__}, objective {config.objective!r}, pipeline {config.pipeline!r}, "
        f"teacher {config.teacher!r}, collators {config.collator_names()}, -> {config.output_dir}"
    )
    resume = config.resume_from_checkpoint
    trainer.train(resume_from_checkpoint=resume if resume else None)
    trainer.save_model(config.output_dir)
    metrics = {}
    if trainer.is_world_process_zero():
        metrics = write_metrics(
            trainer,
            config.output_dir,
            {
                "objective": config.objective,
                "pipeline": config.pipeline,
                "preset": run.get("preset"),
                "examples": len(dataset),
                "wall_seconds": round(time.time() - start, 2),
            },
        )
        print(f"tide distill: wrote the student, metrics.json and loss.png to {config.output_dir} "
              f"in {time.time() - start:.1f} s")
    return metrics


def run(args: argparse.Namespace) -> int:
    options, run_opts = resolve_options(args)
    distill(options, run_opts)
    return 0
