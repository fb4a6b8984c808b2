"""``tide distill``: presets, flags (preset < ``--config`` YAML < command line),
models, tokenizers and data for a run, then train and report."""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import transformers

from ..pipelines import get_pipeline
from ..training import DistillConfig, build_trainer, write_metrics

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

        from ..offline import tokenizer

        tok = copy.deepcopy(tokenizer("qwen"))
        tok.chat_template = ALT_TEMPLATE
        return tok
    from ..alignment.preprocess import load_tokenizer

    return load_tokenizer(spec)


def _special_ids(tok: Any) -> dict[str, int]:
    """The tokenizer's special ids for a tiny model's config (so saving does not have
    to reconcile the model's generation config with the tokenizer)."""
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    return {k: v for k, v in ids.items() if v is not None}


def _student(run: Mapping[str, Any], tok: Any, config: DistillConfig) -> torch.nn.Module:
    impl = run.get("attn_implementation") or "sdpa"
    if run.get("model_name_or_path"):
        from ..checkpoints import load_student

        return load_student(run["model_name_or_path"], attn_implementation=impl)
    from ..tiny import tiny_qwen3

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
    from ..tiny import tiny_qwen3, tiny_qwen3_moe

    build = tiny_qwen3_moe if run.get("teacher_arch", "qwen3_moe") == "qwen3_moe" else tiny_qwen3
    return build(len(tok), hidden_size=int(run.get("tiny_hidden_size") or 32), seed=config.seed + 1, **_special_ids(tok))


def _dataset(run: Mapping[str, Any], config: DistillConfig, student_tok: Any, teacher_tok: Any) -> Any:
    from ..alignment.preprocess import DEMO_DATA, load_jsonl, preprocess

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



def distill(options: Mapping[str, Any], run: Mapping[str, Any]) -> dict[str, Any]:
    """Run a distillation from resolved options; returns the metrics written."""
    start = time.time()
    config = DistillConfig(**options)
    student_tok = _tokenizer(run.get("student_tokenizer") or "offline:qwen")
    teacher_tok = _tokenizer(run.get("teacher_tokenizer") or "offline:mistral")
    from ..alignment import resolve_mask_id

    student_mask = resolve_mask_id(student_tok)
    if config.teacher_mask_token_id is None and (config.pipeline is None or get_pipeline(config.pipeline).has_teacher_ids):
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
