"""``tide distill``'s flags and options: every :class:`~tide_plugin.training.DistillConfig`
field (the reference's flags included, :mod:`.reference_args`) plus the run options,
merged preset < ``--config`` YAML < command line (:func:`resolve_options`)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import transformers

from ..training.config import implied_pipeline
from . import did_you_mean
from .distill_checks import pipeline_mismatch
from .presets import PRESET_FOR_PIPELINE, PRESET_MODELS, PRESETS
from .reference_args import CliDistillConfig

RUN_KEYS = (
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
    "heldout",
    "demo_arms",
    # the reference entry points' data arguments
    "dataset_args",
    "load_preprocessed_data",
    "mask_prompt_loss",
    "truncation",
    "num_proc",
    "disable_caching",
)
MODEL_KEYS = ("model_name_or_path", "teacher_model_name_or_path")


def config_parser(add_help: bool = False) -> argparse.ArgumentParser:
    return transformers.HfArgumentParser(CliDistillConfig, add_help=add_help)


def str2bool(value: str) -> bool:
    low = str(value).strip().lower()
    if low in ("1", "true", "yes", "y", "on"):
        return True
    if low in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is not a truth value (True or False)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``tide distill`` flags: every :class:`DistillConfig` field (TrainingArguments'
    included, the reference flags too) plus the run options below. Only flags given
    on the command line override the preset and the ``--config`` YAML."""
    run = parser.add_argument_group("run")
    run.add_argument("--config", default=None, help="YAML file of DistillConfig fields and run options")
    run.add_argument(
        "--preset", default=None,
        help=f"one of {sorted(PRESETS)} or 'none' (default: demo, or none when a model folder is given)",
    )
    run.add_argument("--model_name_or_path", default=None, help="student folder, plain or A2D (default: a tiny Qwen3)")
    run.add_argument("--teacher_model_name_or_path", default=None, help="teacher folder (default: a tiny model)")
    run.add_argument(
        "--student_tokenizer", default=None,
        help="offline:qwen, offline:mistral or a folder (default: the student folder's, else offline:qwen)",
    )
    run.add_argument("--teacher_tokenizer", default=None, help="the teacher's (default: the teacher folder's)")
    run.add_argument("--data", default=None, help="chat JSONL (aligned in-process) or a `tide preprocess` output dir")
    ref = parser.add_argument_group("reference data arguments")
    ref.add_argument("--dataset_args", default=None, help="the reference's name of --data (local paths only)")
    ref.add_argument(
        "--load_preprocessed_data", type=str2bool, nargs="?", const=True, default=None,
        help="True: the data is a `tide preprocess` folder; False: a chat JSONL aligned now",
    )
    ref.add_argument(
        "--mask_prompt_loss", type=str2bool, nargs="?", const=True, default=None,
        help="False also trains on prompt tokens (raw data only; default True)",
    )
    ref.add_argument(
        "--truncation", choices=["right", "filter"], default=None,
        help="right: cut rows at max_length (default); filter: drop rows longer than max_length",
    )
    ref.add_argument("--num_proc", type=int, default=None, help="worker processes when aligning raw data")
    ref.add_argument(
        "--disable_caching", type=str2bool, nargs="?", const=True, default=None, help="datasets.disable_caching()"
    )
    run.add_argument("--max_samples", type=int, default=None, help="use only the first N conversations")
    run.add_argument("--tiny_hidden_size", type=int, default=None, help="hidden size of the tiny default models")
    run.add_argument("--backend", default=None, choices=["auto", "dllm", "transformers"], help="trainer base class")
    run.add_argument("--heldout", default=None, help="chat JSONL scored in held-out bits per byte before/after")
    run.add_argument(
        "--demo_arms", default=None,
        help="objectives trained beside the run's own from the same init, data order and noise, comma-separated, "
        "each compared on --heldout with a CE-only control ('none'), which any arm brings; '' for none "
        "(presets: demo 'none,reverse_calm', shared 'none')",
    )
    run.add_argument("--attn_implementation", default=None, help="student attention: sdpa | eager | flex_attention")
    hf = config_parser()
    for action in hf._actions:  # every dataclass flag, defaults suppressed: only explicit flags reach run()
        action.default = argparse.SUPPRESS
    parser._add_container_actions(hf)


def load_yaml(path: str) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of options, got {type(data).__name__}")
    return data


def resolve_options(args: argparse.Namespace | Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(config fields, run options)``: preset < YAML < explicit flags.

    The ``demo`` preset is the default only when no model folder is given: a run on real
    checkpoints starts from the plain defaults (transformers' and the method's, docs/method.md#recipes), as the
    reference's launch lines do.
    """
    given = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    given = {k: v for k, v in given.items() if v is not None or k not in RUN_KEYS}
    yaml_opts = load_yaml(given["config"]) if given.get("config") else {}
    explicit = {**yaml_opts, **{k: v for k, v in given.items() if k != "config"}}
    if "dataset_args" in explicit:
        if explicit.get("data") not in (None, explicit["dataset_args"]):
            raise ValueError(f"--data {explicit['data']!r} and --dataset_args {explicit['dataset_args']!r} disagree")
        explicit["data"] = explicit.pop("dataset_args")
    chosen = explicit.pop("preset", None)
    preset = chosen or ("none" if any(explicit.get(k) for k in MODEL_KEYS) else "demo")
    if preset != "none" and preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is not one of {sorted(PRESETS)} or 'none'{did_you_mean(preset, PRESETS)}")
    merged: dict[str, Any] = {}
    if preset != "none":
        merged.update(PRESETS[preset])
        merged.update(PRESET_MODELS[preset])
    mode = explicit.get("distill_mode") or explicit.get("objective")
    if mode and "pipeline" not in explicit and "pipeline" in merged:
        implied = implied_pipeline(str(mode))
        if implied is not None and implied != merged["pipeline"]:
            if chosen:
                raise ValueError(pipeline_mismatch(str(mode), implied, preset, merged["pipeline"]))
            preset = PRESET_FOR_PIPELINE[implied]  # the default preset yields to the chosen objective
            merged = {**PRESETS[preset], **PRESET_MODELS[preset]}
    if "num_train_epochs" in explicit and "max_steps" not in explicit:
        merged.pop("max_steps", None)  # epochs asked for: the preset's step cap must not win
    if "warmup_steps" in explicit and "warmup_ratio" not in explicit:
        merged.pop("warmup_ratio", None)  # warm-up given in steps: the preset's ratio must not clash
    if "save_steps" in explicit and "save_strategy" not in explicit:
        merged["save_strategy"] = "steps"  # an explicit save interval beats the preset's "no"
    for model_key, tok_key in (("model_name_or_path", "student_tokenizer"), ("teacher_model_name_or_path", "teacher_tokenizer")):
        if explicit.get(model_key) and tok_key not in explicit:
            merged.pop(tok_key, None)  # the tokenizer comes from the model folder
    if "concat_order" in explicit and "teacher" not in explicit:
        merged["teacher"] = "block"  # the reference's WeDLM entry point: a block teacher in that order
    merged.update(explicit)
    merged["preset"] = preset
    names = {f.name for f in dataclasses.fields(CliDistillConfig) if f.init}
    run_keys = set(RUN_KEYS) | {"teacher_arch", "study_assets"}
    unknown = set(merged) - names - run_keys
    if unknown:
        hints = "".join(did_you_mean(u, names | run_keys) for u in sorted(unknown))
        raise ValueError(f"unknown options {sorted(unknown)}{hints}; see `tide distill --help`")
    return {k: v for k, v in merged.items() if k in names}, {k: v for k, v in merged.items() if k in run_keys}
