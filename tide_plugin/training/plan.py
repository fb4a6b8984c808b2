"""A run resolved once (docs/architecture.md#who-owns-each-run-level-value):
:func:`plan_run` turns a config into a frozen :class:`RunPlan`, and everything that
builds the run reads the plan.

- The objective is built from ``config.objective_kwargs()`` once and checked against
  the pipeline once; whether it reads a teacher or needs the projection ``W`` is read
  from it, not asked again.
- The teacher adapter's name and keywords are settled here (:class:`TeacherSettings`).
- The ids a run needs before any batch (student mask / EOS / pad, teacher mask / pad /
  EOS) are settled once the tokenizers are known, :meth:`RunPlan.with_ids`, into the
  :class:`~tide_plugin.hookspecs.RunContext` the collator stages read; the teacher's
  mask id ``m_T`` by one rule, :func:`resolve_mask_ids`.
- What a saved student needs in its model config (mask id, block size) is
  :meth:`RunPlan.student_config`, applied once by :func:`configure_student`.

Nothing here changes the config: a value the run decides (``shared_vocab_size`` of a
demo, say) is decided before the config is built. The run's defaults are the config's
field defaults (:class:`~tide_plugin.training.DistillArguments`); the plan states none.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch

from ..batch import PipelineInfo
from ..hookspecs import RunContext
from ..pipelines import get_pipeline

if TYPE_CHECKING:
    from .config import DistillConfig


@dataclass(frozen=True)
class TeacherSettings:
    """The teacher adapter a run builds: its registered name and the keywords
    :func:`tide_plugin.get_teacher` gets besides the model, except the ids, which come
    from the run's :class:`~tide_plugin.hookspecs.RunContext` (:meth:`RunPlan.teacher_options`)."""

    adapter: str
    options: Mapping[str, Any]
    takes_eos: bool
    """Whether the adapter's config declares ``eos_token_id`` (the block teacher's padding)."""


@dataclass(frozen=True)
class RunPlan:
    """Everything a run decides before any model work. Built by :func:`plan_run`."""

    config: DistillConfig
    """The config the plan was made from (read, never written)."""
    objective: Any
    """Built once from :attr:`objective_kwargs` and checked against :attr:`pipeline_info`."""
    objective_name: str
    """The objective's registered names (aliases resolved): ``taid_aligned`` -> ``tidal``."""
    objective_kwargs: Mapping[str, Any]
    """``config.objective_kwargs()``, computed once (the reference's flat flags applied)."""
    pipeline_info: PipelineInfo
    """The pipeline, the shared vocabulary size and whether ``W`` is provided."""
    teacher: TeacherSettings | None
    """``None``: the objective reads no teacher (CE only); no teacher is loaded."""
    context: RunContext | None = None
    """The ids and collator settings (:meth:`with_ids`); ``None`` until the tokenizers are known."""

    @property
    def pipeline(self) -> str:
        return self.pipeline_info.pipeline

    @property
    def reads_teacher(self) -> bool:
        return self.teacher is not None

    @property
    def needs_projection(self) -> bool:
        """Whether the objective requires the vocabulary projection ``W`` (docs/method.md#projected-kl)."""
        return self.pipeline_info.has_projection

    def with_ids(
        self,
        *,
        student_tokenizer: Any = None,
        teacher_tokenizer: Any = None,
        student_mask_id: int | None = None,
        student_eos_id: int | None = None,
        teacher_model: torch.nn.Module | str | None = None,
    ) -> RunPlan:
        """This plan with its :attr:`context`: the student's ids from ``student_mask_id`` /
        ``student_eos_id`` else its tokenizer's, the teacher's pad / EOS from the config's
        reference flags else its tokenizer's, ``m_T`` by :func:`resolve_mask_ids`."""
        config = self.config
        mask_id, teacher_mask = resolve_mask_ids(
            self.pipeline,
            student_tokenizer=student_tokenizer,
            student_mask_id=student_mask_id,
            given_teacher_mask_id=config.teacher_mask_token_id,
            teacher_tokenizer=teacher_tokenizer,
            teacher_model=teacher_model,
            reads_teacher=self.reads_teacher,
        )
        eos_id = student_eos_id if student_eos_id is not None else getattr(student_tokenizer, "eos_token_id", None)
        if eos_id is None:
            raise ValueError(f"student mask id ({mask_id}) and EOS id ({eos_id}) are needed; pass a tokenizer or the ids")
        context = run_context(
            config,
            student_eos_id=int(eos_id),
            student_mask_id=int(mask_id),
            teacher_mask_id=teacher_mask,
            student_pad_id=getattr(student_tokenizer, "pad_token_id", None),
            **teacher_special_ids(teacher_tokenizer),
        )
        return dataclasses.replace(self, context=context)

    def teacher_options(self) -> dict[str, Any]:
        """The teacher adapter's keywords with the run's ids: ``m_T`` where the teacher
        reads its own ids (the adapter reads its model config otherwise), its EOS for
        block padding (docs/method.md#noising); explicit ``teacher_config`` wins."""
        if self.teacher is None or self.context is None:
            raise ValueError("the run reads no teacher, or its ids are not settled yet (RunPlan.with_ids)")
        has_teacher_ids = get_pipeline(self.pipeline).has_teacher_ids
        options = {"mask_token_id": self.context.teacher_mask_id if has_teacher_ids else self.config.teacher_mask_token_id}
        if self.teacher.takes_eos and self.context.teacher_eos_id is not None:
            options["eos_token_id"] = self.context.teacher_eos_id
        options.update(self.teacher.options)
        return options

    def student_config(self) -> dict[str, Any]:
        """What the student's model config records for sampling and evaluation after the
        run: its mask id and the block size it was trained with."""
        if self.context is None:
            raise ValueError("the run's ids are not settled yet (RunPlan.with_ids)")
        return {"mask_token_id": int(self.context.student_mask_id), "block_size": int(self.context.block_size)}


def canonical_objective(objective: str) -> str:
    """Registered names of an objective string (aliases resolved): ``taid_aligned`` -> ``tidal``."""
    from ..registry import get_registry

    reg = get_registry()
    return "+".join(reg.resolve("objective", p).name for p in objective.split("+"))


def plan_run(config: DistillConfig) -> RunPlan:
    """The run of ``config`` resolved once: the objective built and checked against the
    pipeline, the teacher adapter's settings, the shared vocabulary. Raises before any
    model work when the objective and the pipeline disagree."""
    from ..registry import get_objective, get_registry

    if config.pipeline is None:
        raise ValueError(f"objective {config.objective!r} implies no pipeline; pass --pipeline same | shared | cross")
    objective_kwargs = config.objective_kwargs()
    objective = get_objective(config.objective, **objective_kwargs)
    info = PipelineInfo(pipeline=config.pipeline, shared_vocab_size=config.shared_vocab_size,
                        has_projection="projection" in objective.requirements)
    objective.check_pipeline(info)
    if info.shared_vocab_size is None and objective.requirements & {"token_alignment", "pairs"}:
        warnings.warn(
            "shared_vocab_size is unset: token-level objectives compare the first min(V_S, V_T) ids of both "
            "vocabularies, added tokens included; set shared_vocab_size to the ids both sides share "
            "(Qwen family: 151646, docs/method.md#shared-vocabulary)",
            UserWarning,
            stacklevel=3,
        )
    teacher = None
    if getattr(objective, "reads_teacher", True):
        teacher_cls = get_registry().resolve("teacher", config.teacher).spec.config_cls
        fields = {f.name for f in dataclasses.fields(teacher_cls)} if dataclasses.is_dataclass(teacher_cls) else set()
        options: dict[str, Any] = {
            "dtype": config.teacher_dtype,
            "sequential_views": config.sequential_views,
            "load_in_4bit": config.teacher_load_in_4bit,
        }
        # options the adapter's config declares (the block-diffusion layout, for one) are
        # passed through, whichever plugin provides the adapter
        for key, value in (("concat_order", config.concat_order), ("block_size", int(config.block_size)),
                           ("attn_implementation", config.teacher_attn_implementation)):
            if key in fields and value is not None:
                options[key] = value
        options.update(config.teacher_config)
        teacher = TeacherSettings(adapter=config.teacher, options=MappingProxyType(options),
                                  takes_eos="eos_token_id" in fields)
    return RunPlan(
        config=config,
        objective=objective,
        objective_name=canonical_objective(config.objective),
        objective_kwargs=MappingProxyType(objective_kwargs),
        pipeline_info=info,
        teacher=teacher,
    )


# -- ids --------------------------------------------------------------------------------------
def resolve_mask_ids(
    pipeline: str,
    *,
    student_tokenizer: Any = None,
    student_mask_id: int | None = None,
    given_teacher_mask_id: int | None = None,
    teacher_tokenizer: Any = None,
    teacher_model: torch.nn.Module | str | None = None,
    reads_teacher: bool = True,
) -> tuple[int, int | None]:
    """``(m_S, m_T)``, the one rule of a run's mask ids.

    ``m_S``: ``student_mask_id``, else the student tokenizer's mask token. ``m_T``:
    ``given_teacher_mask_id`` (``--teacher_mask_token_id``); else, where the teacher reads
    the student's ids (``same``), ``m_S``; else the teacher tokenizer's mask token; else
    the teacher model config's ``mask_token_id``; else, when no teacher is read (CE only),
    ``m_S`` (it fills teacher ids nobody reads).

    :raises ValueError: no student mask id, or a pipeline with teacher ids and no ``m_T``.
    """
    mask_id = student_mask_id if student_mask_id is not None else getattr(student_tokenizer, "mask_token_id", None)
    if mask_id is None:
        eos = getattr(student_tokenizer, "eos_token_id", None)
        raise ValueError(f"student mask id ({mask_id}) and EOS id ({eos}) are needed; pass a tokenizer or the ids")
    teacher_mask = given_teacher_mask_id
    if teacher_mask is None and not get_pipeline(pipeline).has_teacher_ids:
        teacher_mask = mask_id
    if teacher_mask is None:
        teacher_mask = getattr(teacher_tokenizer, "mask_token_id", None)
    if teacher_mask is None and reads_teacher:
        from ..teachers.base import model_mask_id

        teacher_mask = model_mask_id(teacher_model)
    if teacher_mask is None and not reads_teacher:
        teacher_mask = mask_id
    if teacher_mask is None:
        raise ValueError(
            f"the {pipeline!r} pipeline needs the teacher's mask id m_T: the teacher tokenizer has no mask token and "
            "the teacher's config no mask_token_id; pass --teacher_mask_token_id <int>"
        )
    return int(mask_id), int(teacher_mask)


def teacher_special_ids(tok: Any) -> dict[str, int]:
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
    which of it they need (:attr:`~tide_plugin.hookspecs.CollatorStageProtocol`). Every
    setting comes from ``config``; the reference's ``--teacher_pad_token_id`` /
    ``--teacher_eos_token_id`` beat the tokenizer's."""
    return RunContext(
        pipeline=config.pipeline,
        block_size=int(config.block_size),
        seed=int(config.noise_seed if config.noise_seed is not None else config.seed),
        student_eos_id=int(student_eos_id),
        student_mask_id=int(student_mask_id),
        student_pad_id=student_pad_id,
        teacher_mask_id=teacher_mask_id,
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


def configure_student(student: torch.nn.Module, plan: RunPlan) -> None:
    """Record :meth:`RunPlan.student_config` on the student's model config, once, before
    training: the saved student carries the mask id and block size it was trained with."""
    for key, value in plan.student_config().items():
        setattr(student.config, key, value)
