"""Building a run: the trainer class (transformers or dllm), the collator chain
and :func:`build_trainer` (teacher adapter, objective, collators, trainer)."""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import transformers

from ..batch import PipelineInfo
from ..hookspecs import RunContext
from ..pipelines import get_pipeline
from .config import DistillConfig
from .loss import DistillBD3LMTrainer, DistillCollator
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
# Building a run
# --------------------------------------------------------------------------------------
def run_context(
    config: DistillConfig,
    *,
    student_eos_id: int,
    student_mask_id: int,
    teacher_mask_id: int | None,
    student_pad_id: int | None = None,
    teacher_pad_id: int = 0,
    teacher_eos_id: int | None = None,
) -> RunContext:
    """What the run knows before any batch, for the collator stages that declare
    which of it they need (:attr:`~tide_plugin.hookspecs.CollatorStageProtocol`)."""
    return RunContext(
        pipeline=config.pipeline,
        block_size=int(config.block_size),
        seed=int(config.noise_seed if config.noise_seed is not None else config.seed),
        student_eos_id=int(student_eos_id),
        student_mask_id=int(student_mask_id),
        student_pad_id=student_pad_id,
        teacher_mask_id=teacher_mask_id,
        # the reference's --teacher_pad_token_id / --teacher_eos_token_id beat the tokenizer's
        teacher_pad_id=int(teacher_pad_id if config.teacher_pad_token_id is None else config.teacher_pad_token_id),
        teacher_eos_id=teacher_eos_id if config.teacher_eos_token_id is None else int(config.teacher_eos_token_id),
        max_length=getattr(config, "max_length", None),  # DistillConfig's; a dllm run truncates with its DataArguments
        teacher_max_length=config.teacher_max_length,
        masking_schedule=config.masking_schedule,
        time_epsilon=float(config.time_epsilon),
        ce_weighting=config.ce_weighting,
        demo_ratio=float(config.demo_ratio),
        chunk_noise=config.chunk_noise,
    )


def build_collator(
    config: DistillConfig,
    *,
    student_eos_id: int,
    student_mask_id: int,
    teacher_mask_id: int | None,
    student_pad_id: int | None = None,
    teacher_pad_id: int = 0,
    teacher_eos_id: int | None = None,
) -> DistillCollator:
    """The collator chain of ``config.collator_names()``: each stage gets the fields of
    the :func:`run_context` its class declares (``run_context``: config key -> field),
    then ``config.collator_config`` for it. The stage names appear nowhere here."""
    from ..collators.chain import build_collator_chain
    from ..registry import get_registry

    context = run_context(
        config,
        student_eos_id=student_eos_id,
        student_mask_id=student_mask_id,
        teacher_mask_id=teacher_mask_id,
        student_pad_id=student_pad_id,
        teacher_pad_id=teacher_pad_id,
        teacher_eos_id=teacher_eos_id,
    )
    reg = get_registry()
    per_stage: dict[str, dict[str, Any]] = {}
    names = config.collator_names()
    for name in names:
        wanted = getattr(reg.resolve("collator", name).spec.factory, "run_context", {})
        per_stage[name] = {key: getattr(context, field) for key, field in wanted.items()}
        per_stage[name].update(config.collator_config.get(name, {}))
    return DistillCollator(build_collator_chain(names, **per_stage))


def _teacher_special_ids(tok: Any) -> dict[str, int]:
    """Teacher pad (else EOS) and EOS ids from its tokenizer, as the reference takes them."""
    if tok is None:
        return {}
    eos = getattr(tok, "eos_token_id", None)
    pad = getattr(tok, "pad_token_id", None)
    pad = eos if pad is None else pad
    out = {}
    if pad is not None:
        out["teacher_pad_id"] = int(pad)
    if eos is not None:
        out["teacher_eos_id"] = int(eos)
    return out


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


def build_teacher(config: DistillConfig, teacher_model: torch.nn.Module | str, teacher_tokenizer: Any = None) -> Any:
    """The teacher adapter ``config.teacher`` around ``teacher_model`` (a module or a folder)."""
    from ..registry import get_registry, get_teacher

    teacher_kwargs: dict[str, Any] = {
        "mask_token_id": config.teacher_mask_token_id,
        "dtype": config.teacher_dtype,
        "sequential_views": config.sequential_views,
        "load_in_4bit": config.teacher_load_in_4bit,
    }
    # Options the adapter's config declares (the block-diffusion layout, for one) are
    # passed through, whichever plugin provides the adapter.
    teacher_cls = get_registry().resolve("teacher", config.teacher).spec.config_cls
    teacher_fields = {f.name for f in dataclasses.fields(teacher_cls)} if dataclasses.is_dataclass(teacher_cls) else set()
    teacher_eos = config.teacher_eos_token_id
    if teacher_eos is None and teacher_tokenizer is not None:
        teacher_eos = getattr(teacher_tokenizer, "eos_token_id", None)
    for key, value in (
        ("concat_order", config.concat_order),
        ("block_size", int(config.block_size)),
        ("attn_implementation", config.teacher_attn_implementation),
        ("eos_token_id", teacher_eos),  # the block teacher's EOS padding (docs/method.md#noising)
    ):
        if key in teacher_fields and value is not None:
            teacher_kwargs[key] = value
    teacher_kwargs.update(config.teacher_config)
    return get_teacher(config.teacher, model=teacher_model, **teacher_kwargs)


def run_projection(
    config: DistillConfig,
    teacher_tokenizer: Any,
    student_tokenizer: Any,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    say: Callable[[str], None] | None = print,
) -> VocabProjection | None:
    """The vocabulary projection ``W`` when ``config.objective`` requires ``projection``
    (``docs/method.md#projected-kl``), else ``None`` and nothing is built. ``W`` is loaded
    from ``data_dir`` (a ``tide preprocess`` folder) when it holds one for these tokenizers,
    else built from them now; ``say`` gets one line with its coverage."""
    from ..alignment.projection_build import projection_for_run
    from ..registry import objective_requirements

    if "projection" not in objective_requirements(config.objective, **config.objective_kwargs()):
        return None
    if teacher_tokenizer is None or student_tokenizer is None:
        raise ValueError(
            f"objective {config.objective!r} needs the vocabulary projection W from the teacher's tokens to the "
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
    config: DistillConfig,
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
) -> transformers.Trainer:
    """Assemble teacher adapter, objective, collator chain and trainer from ``config``.

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
    """
    from ..registry import get_objective

    if config.pipeline is None:
        raise ValueError("config.pipeline is unset: choose same | shared | cross (or a mode that implies one)")
    tok = student_tokenizer
    mask_id = student_mask_id if student_mask_id is not None else getattr(tok, "mask_token_id", None)
    eos_id = student_eos_id if student_eos_id is not None else getattr(tok, "eos_token_id", None)
    if mask_id is None or eos_id is None:
        raise ValueError(f"student mask id ({mask_id}) and EOS id ({eos_id}) are needed; pass a tokenizer or the ids")
    objective_kwargs = config.objective_kwargs()
    objective = get_objective(config.objective, **objective_kwargs)
    if config.shared_vocab_size is None and objective.requirements & {"token_alignment", "pairs"}:
        warnings.warn(
            "shared_vocab_size is unset: token-level objectives compare the first min(V_S, V_T) ids of both "
            "vocabularies, added tokens included; set shared_vocab_size to the ids both sides share "
            "(Qwen family: 151646, docs/method.md#shared-vocabulary)",
            UserWarning,
            stacklevel=2,
        )
    if "projection" not in objective.requirements:
        projection = None  # nothing built, nothing moved
    elif projection is None:
        projection = run_projection(config, teacher_tokenizer, tok, say=lambda m: print(f"tide: {m}", flush=True))
    info = PipelineInfo(pipeline=config.pipeline, shared_vocab_size=config.shared_vocab_size,
                        has_projection=projection is not None)
    objective.check_pipeline(info)  # before any model work
    if getattr(objective, "reads_teacher", True):
        teacher = build_teacher(config, teacher_model, teacher_tokenizer)
        teacher_mask = config.teacher_mask_token_id
        if teacher_mask is None:
            teacher_mask = teacher.mask_token_id if get_pipeline(config.pipeline).has_teacher_ids else mask_id
    else:
        # CE only: no teacher adapter, no teacher forward; the collators run as in a
        # distilled run of this pipeline (the teacher mask id only fills teacher ids
        # nobody reads, and draws nothing from the noise stream)
        teacher = None
        teacher_mask = config.teacher_mask_token_id if config.teacher_mask_token_id is not None else mask_id
    collator = build_collator(
        config,
        student_eos_id=int(eos_id),
        student_mask_id=int(mask_id),
        teacher_mask_id=None if teacher_mask is None else int(teacher_mask),
        student_pad_id=getattr(tok, "pad_token_id", None),
        **_teacher_special_ids(teacher_tokenizer),
    )
    if projection is not None:
        v_t, v_s = _output_rows(getattr(teacher, "model", None)), _output_rows(student)
        projection = projection.padded(v_t or projection.teacher_vocab_size, v_s or projection.student_vocab_size)
    student.config.mask_token_id = int(mask_id)
    student.config.block_size = int(config.block_size)
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
    trainer = cls(teacher=teacher, objective=objective, pipeline_info=info, **kwargs)
    if heldout is not None:
        from .heldout import heldout_bpb_scorer

        trainer.heldout_scorer = heldout_bpb_scorer(heldout, tok, block_size=int(config.block_size))
    use_console_table(trainer)  # the key numbers on the console; every logged key in metrics.json
    return trainer
