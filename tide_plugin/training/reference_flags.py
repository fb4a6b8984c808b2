"""The reference's launch flags, translated in front of the run plan.

The reference names some of our fields otherwise (``distill_mode`` for ``objective``,
``use_complementary_demo``, ``taid_lambda_decay``, ``max_teacher_length``), sets
objective parameters through flat flags (``alm_temperature`` / ``kl_temperature``,
``alm_weight`` / ``kl_weight`` / ``taid_weight``, the ``taid_*`` schedule) and passes
options that have no effect here (``pad_to_max_length``, the byteify specs). This
module is the one place that knows those names: :func:`translate_reference_flags`
turns them into ours while the config is built, :func:`reference_objective_options`
turns the flat flags into one objective component's keywords, and
:func:`reference_notes` says what was accepted without effect. The fields themselves
stay on :class:`~tide_plugin.training.DistillArguments`, so every launch line parses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

REFERENCE_RENAMES: tuple[tuple[str, str, Any], ...] = (
    ("use_complementary_demo", "use_comp_demo", False),
    ("taid_lambda_decay", "taid_decay", None),
    ("max_teacher_length", "teacher_max_length", None),
)
"""``(reference name, our name, our default)``: the reference's name wins when only it
is given; both given with different values is an error."""
REFERENCE_WEIGHTS = ("alm_weight", "kl_weight", "taid_weight")
"""Weights of chunk objectives, token KL and token TIDAL (each >= 0)."""
TIDAL_FIELDS = {
    "taid_lambda_init": "lambda_init",
    "taid_lambda_max": "lambda_max",
    "taid_decay": "decay",
    "taid_axis_mode": "axis",
    "taid_timestep_weight": "timestep_weight",
}
"""``taid_*`` flag -> strength-schedule key, for objectives with a ``schedule_config``."""
UNUSED_REFERENCE_OPTIONS = ("teacher_byteify_spec", "student_byteify_spec")


@dataclass
class ReferenceFlags:
    """The reference's launch flags that only translate into our fields or objective
    keywords, or have no effect here (a mixin of
    :class:`~tide_plugin.training.DistillArguments`, so every launch line parses)."""

    distill_mode: str | None = field(default=None, metadata={"help": "reference mode string (alias of --objective)"})
    alm_temperature: float | None = field(default=None, metadata={"help": "temperature of chunk objectives"})
    kl_temperature: float | None = field(default=None, metadata={"help": "temperature of token objectives"})
    taid_lambda_init: float | None = field(default=None, metadata={"help": "TIDAL l0"})
    taid_lambda_max: float | None = field(default=None, metadata={"help": "TIDAL l1"})
    taid_decay: str | None = field(default=None, metadata={"help": "TIDAL g: cosine | linear"})
    taid_axis_mode: str | None = field(default=None, metadata={"help": "both | training_only | timestep_only"})
    taid_timestep_weight: str | None = field(default=None, metadata={"help": "uniform | midrange"})
    # the rest of the reference trainer config (DistillBD3LMConfig)
    use_complementary_demo: bool | None = field(default=None, metadata={"help": "reference name of use_comp_demo"})
    taid_lambda_decay: str | None = field(default=None, metadata={"help": "reference name of taid_decay"})
    alm_weight: float | None = field(default=None, metadata={"help": "weight of chunk objectives (alm, *_alm_taid)"})
    kl_weight: float | None = field(default=None, metadata={"help": "weight of token KL / reverse KL objectives"})
    taid_weight: float | None = field(default=None, metadata={"help": "weight of token TIDAL (taid, taid_aligned)"})
    # the reference entry points' teacher / data arguments
    max_teacher_length: int | None = field(default=None, metadata={"help": "reference name of teacher_max_length"})
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "pad student rows to max_length (accepted; changes only tensor shapes)"}
    )
    teacher_byteify_spec: str | None = field(default=None, metadata={"help": "(reference; byte tables come from the tokenizer)"})
    student_byteify_spec: str | None = field(default=None, metadata={"help": "(reference; byte tables come from the tokenizer)"})


def truth(value: Any) -> bool:
    """A flag's truth value (``"True"``, ``"yes"``, ``1``, ...)."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y", "on")
    return bool(value)


def translate_reference_flags(args: Any) -> None:
    """While ``args`` (a :class:`~tide_plugin.training.DistillArguments`) is built: the
    reference's names onto ours, its weights checked, ``distill_mode`` onto ``objective``."""
    for ref, ours, default in REFERENCE_RENAMES:
        ref_value, our_value = getattr(args, ref), getattr(args, ours)
        if ref_value is None:
            continue
        if ref == "use_complementary_demo":
            ref_value, our_value = truth(ref_value), truth(our_value)
        if our_value not in (default, None) and our_value != ref_value:
            raise ValueError(f"{ref}={ref_value!r} and {ours}={our_value!r} disagree; give one of them")
        setattr(args, ours, ref_value)
    args.pad_to_max_length = truth(args.pad_to_max_length)
    for name in REFERENCE_WEIGHTS:
        value = getattr(args, name)
        if value is not None and float(value) < 0:
            raise ValueError(f"{name} {value} must be >= 0")
    if args.distill_mode:
        args.objective = args.distill_mode


def reference_objective_options(
    args: Any, *, chunk_level: bool, interpolates_teacher: bool, fields: set[str], explicit: Mapping[str, Any]
) -> dict[str, Any]:
    """One objective component's keywords from the flat flags: ``alm_temperature`` for
    chunk-level objectives and ``kl_temperature`` for the others; ``alm_weight`` for
    every chunk mode (alm, reverse_alm, alm_taid, reverse_alm_taid), ``taid_weight``
    for token TIDAL, ``kl_weight`` for KL; the ``taid_*`` flags for objectives that
    take a strength schedule. Only keys the component's config declares (``fields``);
    ``explicit`` (its ``objective_config`` entry) wins over the schedule flags."""
    out: dict[str, Any] = {}
    temp = args.alm_temperature if chunk_level else args.kl_temperature
    if temp is not None and "temperature" in fields:
        out["temperature"] = float(temp)
    weight = args.alm_weight if chunk_level else args.taid_weight if interpolates_teacher else args.kl_weight
    if weight is not None and "weight" in fields:
        out["weight"] = float(weight)
    if "schedule_config" in fields:
        for flag, key in TIDAL_FIELDS.items():
            value = getattr(args, flag)
            if value is not None and key not in explicit.get("schedule_config", {}):
                out[key] = value
    return out


def reference_notes(args: Any) -> list[str]:
    """One line per reference option given that has no effect here, saying why."""
    notes = []
    if args.pad_to_max_length:
        notes.append(
            "pad_to_max_length has no effect on the result: rows are padded to a block multiple with EOS "
            "(as the reference does first), and padding beyond that starts a new block that no target attends "
            "to and carries no target; the reference pads for fixed-length flex attention"
        )
    for name in UNUSED_REFERENCE_OPTIONS:
        if getattr(args, name):
            notes.append(
                f"{name} has no effect: byte tables come from each tokenizer itself (tide_plugin alignment), "
                "not from a byteify spec"
            )
    return notes
