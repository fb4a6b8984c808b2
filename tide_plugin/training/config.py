"""Training configuration: :class:`DistillArguments` (the distillation fields, the
reference launch flags among them) and :class:`DistillConfig` (those plus
``transformers.TrainingArguments``)."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import transformers

from ..bd3lm import CONCAT_ORDERS, LOSS_NORMS
from ..hookspecs import DEFAULT_BLOCK_SIZE
from ..jsonio import loads as json_loads
from ..pipelines import CHUNK_NOISE_RULES, PIPELINES, get_pipeline
from .compat import one_config_mixed_precision, settle_warmup_ratio
from .reference_flags import (
    ReferenceFlags,
    reference_notes,
    reference_objective_options,
    translate_reference_flags,
    truth,
)

LOSS_WEIGHT_TYPES = ("elbo", "uniform")
LOSS_WEIGHT_ALIASES = {"scheduler": "elbo"}
"""dllm's name for the ELBO weighting. It stays the field's default and is kept as
typed, because dllm's own config checks the field against its names; the code reads
:attr:`DistillArguments.ce_weighting`, which speaks the ``noise`` stage's names."""


def _parse_mapping(value: Any, name: str) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        out = json_loads(value, name)
        if isinstance(out, dict):
            return out
    raise ValueError(f"{name} must be a mapping or a JSON object string, got {value!r}")


def _not_one_of(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{name} {value!r} is not one of {tuple(allowed)}{hint}"


def implied_pipeline(objective: str, **objective_kwargs: Any) -> str | None:
    """The pipeline an objective's declared requirements imply (third-party objectives
    included; read from their config classes, nothing is built): chunks -> ``cross``,
    template pairs -> ``shared``, position-by-position token alignment -> ``same``;
    ``None`` when they need none of these."""
    from ..registry import objective_requirements

    needs = objective_requirements(objective, **objective_kwargs)
    for need, has in (("chunks", "has_chunks"), ("pairs", "has_pairs"), ("token_alignment", "has_token_alignment")):
        if need in needs:  # the first pipeline (same, shared, cross) that offers it
            return next(name for name in PIPELINES if getattr(get_pipeline(name), has))
    return None


@dataclass
class DistillArguments(ReferenceFlags):
    """The distillation options (a mixin of dataclass fields; see :class:`DistillConfig`).

    Reference launch flags are accepted as aliases: ``distill_mode`` (``alm``,
    ``reverse_alm``, ``alm_taid``, ``kl_aligned``, ``reverse_kl_aligned``,
    ``taid_aligned``, any registered name, ``+`` composition; ``*_aligned`` selects
    the ``shared`` pipeline, chunk modes ``cross``), ``use_comp_demo``, ``demo_ratio``,
    ``alm_temperature`` (chunk objectives), ``kl_temperature`` (token objectives),
    ``taid_lambda_init`` / ``taid_lambda_max`` / ``taid_decay`` / ``taid_axis_mode`` /
    ``taid_timestep_weight`` (TIDAL), ``teacher_mask_token_id``, ``shared_vocab_size``,
    ``concat_order``; the rest of the reference trainer config and entry-point
    arguments too: ``alm_weight`` / ``kl_weight`` / ``taid_weight`` (weights of chunk,
    KL and token-TIDAL objectives), ``use_complementary_demo``, ``taid_lambda_decay``,
    ``max_teacher_length`` (reference names of ours), ``teacher_attn_implementation``,
    ``teacher_eos_token_id``, ``teacher_pad_token_id``; options without an
    effect here are listed by :meth:`reference_notes`, unsupported values refused.
    The flags that only translate (or have no effect) are the fields of
    :class:`~tide_plugin.training.reference_flags.ReferenceFlags`, translated by that
    module in front of the run's plan.

    No field shares a name with dllm's ``ModelArguments``, ``DataArguments`` or
    ``TrainingArguments``, so these parse beside them in one ``HfArgumentParser``
    (:mod:`tide_plugin.integrations.dllm_args`); the fields dllm's ``BD3LMConfig``
    adds (``block_size``, ``time_epsilon``, ``loss_weight_type``, ``loss_norm_type``,
    ``right_shift_logits``) have dllm's meaning. The student's truncation length is
    dllm's ``max_length`` (``DataArguments``; :class:`DistillConfig` has its own); the
    reference's model flags (``dtype``, ``lora``, ...) are the CLI's
    (:mod:`tide_plugin.cli.reference_args`).
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
    fused_output_layer: bool = field(
        default=True,
        metadata={"help": "compute CE and objectives from hidden states, rows only, never [b, L, V] logits "
                  "(used when the objective, student and teacher support it; False builds full logits)"},
    )
    teacher_load_in_4bit: bool = field(default=False, metadata={"help": "4-bit teacher (needs bitsandbytes)"})
    pipeline: str | None = field(default=None, metadata={"help": "same | shared | cross (inferred when unset)"})
    shared_vocab_size: int | None = field(default=None, metadata={"help": "V_shared for token objectives"})
    block_size: int = field(default=DEFAULT_BLOCK_SIZE, metadata={"help": "BD3LM block size"})
    masking_schedule: str = field(default="linear", metadata={"help": "alpha(t): linear | cosine"})
    time_epsilon: float = field(default=1e-3, metadata={"help": "t ~ U[eps, 1)"})
    loss_weight_type: str = field(
        default="scheduler",
        metadata={"help": "per-example CE weight: scheduler (dllm's name) = elbo, w(t) from the masking schedule | uniform"},
    )
    loss_norm_type: str = field(default="token", metadata={"help": "CE normalisation: token | sequence | batch"})
    right_shift_logits: bool = field(default=False, metadata={"help": "(dllm compatibility; must stay False)"})
    teacher_max_length: int | None = field(default=None, metadata={"help": "teacher truncation length"})
    noise_seed: int | None = field(default=None, metadata={"help": "seed of the noise / CompDemo streams (default seed)"})
    chunk_noise: str = field(
        default="unbiased",
        metadata={"help": "cross pipeline chunk masking: unbiased (one Bernoulli(1-alpha(t)) draw per chunk, keeps "
                  "CE's w(t) unbiased) | reference (the paper's: a chunk is masked when any of its tokens is)"},
    )
    # CompDemo and the teacher's ids and attention (the reference's flags, ours too)
    use_comp_demo: bool = field(default=False, metadata={"help": "CompDemo: two complementary teacher views"})
    demo_ratio: float = field(default=0.5, metadata={"help": "CompDemo split probability r"})
    teacher_attn_implementation: str | None = field(
        default=None, metadata={"help": "teacher attention when loading a teacher folder: sdpa | eager | flex_attention"}
    )
    teacher_eos_token_id: int | None = field(
        default=None, metadata={"help": "teacher EOS id for block padding (default: the teacher tokenizer's)"}
    )
    teacher_pad_token_id: int | None = field(
        default=None, metadata={"help": "teacher batch-padding id (default: the teacher tokenizer's pad, else EOS)"}
    )

    # -- validation and resolution ------------------------------------------------
    def _distill_post_init(self) -> None:
        translate_reference_flags(self)  # the reference's names and flat flags (reference_flags)
        parts = [p.strip() for p in str(self.objective).split("+")]
        if not parts or any(not p for p in parts):
            raise ValueError(f"objective {self.objective!r} has an empty component; write names joined by '+'")
        self.objective = "+".join(parts)
        self.objective_config = _parse_mapping(self.objective_config, "objective_config")
        self.collator_config = _parse_mapping(self.collator_config, "collator_config")
        self.teacher_config = _parse_mapping(self.teacher_config, "teacher_config")
        self.use_comp_demo = truth(self.use_comp_demo)
        self.sequential_views = truth(self.sequential_views)
        self.fused_output_layer = truth(self.fused_output_layer)
        if self.pipeline is None:
            self.pipeline = self.implied_pipeline()
        if self.pipeline is not None and self.pipeline not in PIPELINES:
            raise ValueError(_not_one_of("pipeline", self.pipeline, PIPELINES))
        if self.concat_order is not None and self.concat_order not in CONCAT_ORDERS:
            raise ValueError(_not_one_of("concat_order", self.concat_order, CONCAT_ORDERS))
        if self.loss_norm_type not in LOSS_NORMS:
            raise ValueError(_not_one_of("loss_norm_type", self.loss_norm_type, LOSS_NORMS))
        if self.loss_weight_type not in LOSS_WEIGHT_TYPES and self.loss_weight_type not in LOSS_WEIGHT_ALIASES:
            raise ValueError(
                _not_one_of("loss_weight_type", self.loss_weight_type, LOSS_WEIGHT_TYPES)
                + f" (or {sorted(LOSS_WEIGHT_ALIASES)}, dllm's name for elbo)"
            )
        from ..registry import get_registry

        get_registry().check_name("masking_schedule", self.masking_schedule, "masking_schedule")
        if not 0.0 < float(self.time_epsilon) < 1.0:
            raise ValueError(f"time_epsilon {self.time_epsilon} must lie in (0, 1)")
        if int(self.block_size) <= 0:
            raise ValueError(f"block_size {self.block_size} must be a positive integer")
        max_length = getattr(self, "max_length", None)  # DistillConfig's; dllm's DataArguments hold theirs
        if max_length is not None and "distill_pad" in self.collator_names() and int(max_length) % int(self.block_size):
            raise ValueError(
                f"max_length ({max_length}) must be a multiple of block_size ({self.block_size}) so that "
                "block-EOS padding never exceeds it"
            )
        if self.chunk_noise not in CHUNK_NOISE_RULES:
            raise ValueError(_not_one_of("chunk_noise", self.chunk_noise, CHUNK_NOISE_RULES))
        if not 0.0 < float(self.demo_ratio) < 1.0:
            raise ValueError(f"demo_ratio {self.demo_ratio} must lie in (0, 1)")
        if self.ce_weight < 0:
            raise ValueError(f"ce_weight {self.ce_weight} must be >= 0")
        if truth(self.right_shift_logits):
            raise ValueError("right_shift_logits=True is not supported: BD3LM predicts x0 at the x_t position")
        for name in ("max_length", "teacher_max_length"):
            value = getattr(self, name, None)
            if value is not None and int(value) <= 0:
                raise ValueError(f"{name} {value} must be a positive integer (or unset)")

    def reference_notes(self) -> list[str]:
        """One line per reference option given that has no effect here, saying why."""
        return reference_notes(self)

    # -- what the pieces are built from -------------------------------------------------
    @property
    def ce_weighting(self) -> str:
        """The per-example CE weight ``w(t)``: ``elbo`` or ``uniform`` (``loss_weight_type``
        with dllm's alias resolved), as the ``noise`` stage names it."""
        return LOSS_WEIGHT_ALIASES.get(self.loss_weight_type, self.loss_weight_type)

    def implied_pipeline(self) -> str | None:
        """:func:`implied_pipeline` of this config's objective and its options."""
        return implied_pipeline(self.objective, **self.objective_kwargs())

    def objective_kwargs(self) -> dict[str, Any]:
        """Per-component configuration for :func:`tide_plugin.get_objective`, with the
        reference flags applied (explicit ``objective_config`` wins): ``alm_temperature``
        to chunk-level objectives and ``kl_temperature`` to the others (by their declared
        requirements), the ``taid_*`` flags to objectives that take a strength schedule
        (a ``schedule_config`` field), whose schedule validates them."""
        from ..registry import get_registry

        reg = get_registry()
        parts = self.objective.split("+")
        out: dict[str, dict[str, Any]] = {}
        for p in parts:
            info = reg.resolve("objective", p)
            cls = info.spec.config_cls
            names = {f.name for f in dataclasses.fields(cls)} if cls is not None and dataclasses.is_dataclass(cls) else set()
            explicit = dict(self.objective_config.get(p, {}) or self.objective_config.get(info.name, {}))
            chunk_level = "chunks" in reg.objective_config(p, **explicit).requirements
            interpolates = bool(getattr(info.spec.factory, "interpolates_teacher", False))
            cfg = reference_objective_options(self, chunk_level=chunk_level, interpolates_teacher=interpolates,
                                              fields=names, explicit=explicit)
            cfg.update(explicit)
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
    max_length: int | None = field(
        default=None, metadata={"help": "student truncation length (dllm: DataArguments.max_length)"}
    )

    # transformers 5 dropped these two TrainingArguments (4.57 has them, same defaults)
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "train into an output_dir that already holds a finished run or checkpoints"},
    )
    group_by_length: bool = field(
        default=False, metadata={"help": "batch rows of similar length (transformers 5: train_sampling_strategy)"}
    )
    warmup_ratio: float | None = field(
        default=None, metadata={"help": "warmup as a fraction of the steps (transformers 5: a float warmup_steps)"}
    )

    def __post_init__(self) -> None:
        check_training_values(self)
        settle_warmup_ratio(self)
        with one_config_mixed_precision():
            super().__post_init__()
        self._distill_post_init()
        self.group_by_length = truth(self.group_by_length)
        if self.group_by_length and hasattr(self, "train_sampling_strategy"):
            self.train_sampling_strategy = "group_by_length"


def check_training_values(args: Any) -> None:
    """The ``TrainingArguments`` values that would otherwise fail late or in silence."""
    if int(args.max_steps) == 0:
        raise ValueError(
            "max_steps 0 trains nothing; give a positive --max_steps, or leave it unset (-1) to train "
            "--num_train_epochs"
        )
    if not float(args.learning_rate) > 0:
        why = " (a zero learning rate trains nothing)" if float(args.learning_rate) == 0 else ""
        raise ValueError(f"learning_rate must be > 0, got {args.learning_rate}{why}")
    if float(args.num_train_epochs) <= 0 and int(args.max_steps) < 0:
        raise ValueError(f"num_train_epochs {args.num_train_epochs} must be > 0 when max_steps is unset")

