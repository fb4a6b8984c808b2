"""Building a run: the trainer class (transformers or dllm), the collator chain
and :func:`build_trainer` (teacher adapter, objective, collators, trainer)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import transformers

from ..hookspecs import RunContext
from .config import DistillConfig
from .loss import DistillBD3LMTrainer, DistillCollator
from .plan import RunPlan, configure_student, plan_run, run_context
from .report import use_console_table

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ..alignment.projection import VocabProjection


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
    from ..integrations.dllm import DllmDistillBD3LMTrainer

    return DllmDistillBD3LMTrainer


# --------------------------------------------------------------------------------------
# Building a run (every decision is the plan's: training/plan.py)
# --------------------------------------------------------------------------------------
def build_collator(config: DistillConfig, context: RunContext | None = None, **ids: Any) -> DistillCollator:
    """The collator chain of ``config.collator_names()``: each stage gets the fields of
    the run's :class:`~tide_plugin.hookspecs.RunContext` its class declares
    (``run_context``: config key -> field), then ``config.collator_config`` for it. The
    stage names appear nowhere here.

    :param context: the plan's (:attr:`RunPlan.context`); else made from ``config`` and
        ``ids``, the keywords of :func:`~tide_plugin.training.plan.run_context`
        (``student_eos_id``, ``student_mask_id``, ``teacher_mask_id``, ...).
    """
    from ..collators.chain import build_collator_chain
    from ..registry import get_registry

    if context is None:
        context = run_context(config, **ids)
    reg = get_registry()
    per_stage: dict[str, dict[str, Any]] = {}
    names = config.collator_names()
    for name in names:
        wanted = getattr(reg.resolve("collator", name).spec.factory, "run_context", {})
        per_stage[name] = {key: getattr(context, field) for key, field in wanted.items()}
        per_stage[name].update(config.collator_config.get(name, {}))
    return DistillCollator(build_collator_chain(names, **per_stage))


def _dtype_names(dtypes: set[torch.dtype]) -> str:
    return "/".join(sorted(str(d).removeprefix("torch.") for d in dtypes)) or "float32"


def settle_student_dtype(student: torch.nn.Module, config: DistillConfig, saved: str | None = None) -> str:
    """Train in float32 unless ``config.dtype`` asks otherwise: a half-precision student
    (saved in bfloat16, say) is cast to float32 in place when ``dtype`` is unset, so
    AdamW's small updates are not rounded away (mixed precision, ``--bf16``, computes
    in bfloat16 over these float32 weights). Returns one line saying what it trains in;
    ``saved`` names the dtype its folder holds, when known."""
    asked = getattr(config, "dtype", None)  # the CLI's --dtype; a plain DistillConfig has none
    dtypes = {p.dtype for p in student.parameters() if p.is_floating_point()}
    half = dtypes & {torch.bfloat16, torch.float16}
    if half and asked is None:
        saved = saved or _dtype_names(half)
        student.to(torch.float32)
        dtypes, half = {torch.float32}, set()
    now = _dtype_names(dtypes)
    line = f"the student trains in {now} weights"
    if saved and saved != now:
        line += f" (saved as {saved}" + (f"; --dtype {saved} trains in that)" if asked is None else ")")
    if half:
        line += f" (--dtype {asked}): AdamW updates below half a {now} step of a weight are lost"
    amp = "bfloat16" if config.bf16 else "float16" if config.fp16 else None
    return line + (f", computing in {amp} (mixed precision)" if amp else "")


def build_teacher(plan: RunPlan, teacher_model: torch.nn.Module | str) -> Any:
    """The plan's teacher adapter around ``teacher_model`` (a module or a folder)."""
    from ..registry import get_teacher

    if plan.teacher is None:
        raise ValueError(f"objective {plan.objective_name!r} reads no teacher; none is built")
    return get_teacher(plan.teacher.adapter, model=teacher_model, **plan.teacher_options())


def run_projection(
    plan: RunPlan | DistillConfig,
    teacher_tokenizer: Any,
    student_tokenizer: Any,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    say: Callable[[str], None] | None = print,
) -> VocabProjection | None:
    """The vocabulary projection ``W`` when the run's objective requires ``projection``
    (``docs/method.md#projected-kl``), else ``None`` and nothing is built. ``W`` is loaded
    from ``data_dir`` (a ``tide preprocess`` folder) when it holds one for these tokenizers,
    else built from them now; ``say`` gets one line with its coverage.

    :param plan: the run's plan (a config is planned first).
    """
    from ..alignment.projection_build import projection_for_run

    if not isinstance(plan, RunPlan):
        plan = plan_run(plan)
    if not plan.needs_projection:
        return None
    if teacher_tokenizer is None or student_tokenizer is None:
        raise ValueError(
            f"objective {plan.config.objective!r} needs the vocabulary projection W from the teacher's tokens to the "
            "student's: pass projection= (tide_plugin.alignment.projection_build.build_projection), or both "
            "teacher_tokenizer and student_tokenizer"
        )
    return projection_for_run(teacher_tokenizer, student_tokenizer, data_dir=data_dir, say=say)


def _output_rows(model: Any) -> int | None:
    """How many token ids ``model``'s output layer scores (``None``: unknown)."""
    model = getattr(model, "module", model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor):
        return int(weight.shape[0])
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(size) if size is not None else None


def build_trainer(
    config: DistillConfig | None = None,
    *,
    student: torch.nn.Module,
    teacher_model: torch.nn.Module | str | None,
    train_dataset: Any,
    student_tokenizer: Any = None,
    student_mask_id: int | None = None,
    student_eos_id: int | None = None,
    teacher_tokenizer: Any = None,
    backend: str = "auto",
    callbacks: Sequence[Any] | None = None,
    projection: VocabProjection | None = None,
    eval_dataset: Any = None,
    heldout: Any = None,
    scheduler: Any = None,
    plan: RunPlan | None = None,
) -> transformers.Trainer:
    """Assemble teacher adapter, objective, collator chain and trainer from the run's
    plan (:func:`~tide_plugin.training.plan.plan_run` of ``config`` unless ``plan`` is
    given; its ids are settled here from the tokenizers and ids passed, unless the plan
    holds them).

    An objective that reads no teacher (``none``, the CE-only control) gets none:
    ``teacher_model`` may then be ``None`` and is not loaded.

    :param projection: the vocabulary projection ``W`` for an objective that requires
        ``projection`` (ignored by others). ``None``: built from ``teacher_tokenizer`` and
        ``student_tokenizer`` (:func:`run_projection`). It is padded to both models' output
        sizes, so ``inputs.projection`` is ``[V_T, V_S]`` of the logits, and moved to the
        student's device.
    :param eval_dataset: rows like ``train_dataset``'s, what ``trainer.evaluate()``
        scores: ``eval_loss``, plus dllm's ``eval_nll`` / ``eval_ppl`` on the dllm backend.
    :param heldout: a chat JSONL path or conversations: adds ``eval_heldout_bpb`` and
        ``eval_heldout_bpb_se``, the student's held-out bits per UTF-8 byte
        (:func:`~tide_plugin.training.heldout.heldout_bpb_scorer`; needs the tokenizer).
    :param scheduler: a dllm alpha scheduler or its name; drives the ``noise`` stage's
        masking (:func:`tide_plugin.integrations.dllm_schedulers.drive_noise`).
    :param plan: the run's plan; ``config``, when also given, must be the plan's.
    """
    if plan is None:
        if config is None:
            raise ValueError("build_trainer needs config= or plan=")
        if config.pipeline is None:
            raise ValueError("config.pipeline is unset: choose same | shared | cross (or a mode that implies one)")
        plan = plan_run(config)
    elif config is not None and config is not plan.config:
        raise ValueError("build_trainer got a config and a plan made from another config; pass one of them")
    config = plan.config
    tok = student_tokenizer
    if not plan.needs_projection:
        projection = None  # nothing built, nothing moved
    elif projection is None:
        projection = run_projection(plan, teacher_tokenizer, tok, say=lambda m: print(f"tide: {m}", flush=True))
    if plan.context is None:
        plan = plan.with_ids(student_tokenizer=tok, teacher_tokenizer=teacher_tokenizer, student_mask_id=student_mask_id,
                             student_eos_id=student_eos_id, teacher_model=teacher_model)
    teacher = build_teacher(plan, teacher_model) if plan.reads_teacher else None
    collator = build_collator(config, plan.context)
    if projection is not None:
        v_t, v_s = _output_rows(getattr(teacher, "model", None)), _output_rows(student)
        projection = projection.padded(v_t or projection.teacher_vocab_size, v_s or projection.student_vocab_size)
    configure_student(student, plan)
    logger.info(settle_student_dtype(student, config))
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
    if projection is not None:
        kwargs["projection"] = projection
    if eval_dataset is not None:
        kwargs["eval_dataset"] = eval_dataset
    if scheduler is not None:
        if cls is DistillBD3LMTrainer:  # dllm's trainer takes it itself
            from ..integrations.dllm_schedulers import drive_noise

            drive_noise(collator, scheduler, config)
        else:
            kwargs["scheduler"] = scheduler
    trainer = cls(teacher=teacher, objective=plan.objective, pipeline_info=plan.pipeline_info, **kwargs)
    if heldout is not None:
        from .heldout import heldout_bpb_scorer

        trainer.heldout_scorer = heldout_bpb_scorer(heldout, tok, block_size=plan.context.block_size)
    use_console_table(trainer)  # the key numbers on the console; every logged key in metrics.json
    return trainer
