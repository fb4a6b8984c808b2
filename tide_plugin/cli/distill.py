"""``tide distill``: presets, flags (preset < ``--config`` YAML < command line),
models, tokenizers and data for a run, then train and report."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import transformers

from ..checkpoints import check_model_folder
from ..pipelines import get_pipeline
from ..training import DistillConfig, build_trainer, run_projection, write_metrics
from ..training.builders import settle_student_dtype
from .distill_run import RunInterrupted, check_resume, check_writable, new_run, resume_command, saved_curve, train_owned
from ..training.config import implied_pipeline
from .distill_checks import pipeline_mismatch
from .reference_args import CliDistillConfig
from .presets import ALT_TEMPLATE, FALLBACK_TOKENIZERS, PRESET_FOR_PIPELINE, PRESET_MODELS, PRESETS
from . import did_you_mean

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


def _config_parser(add_help: bool = False) -> argparse.ArgumentParser:
    return transformers.HfArgumentParser(CliDistillConfig, add_help=add_help)


def _str2bool(value: str) -> bool:
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
        "--load_preprocessed_data", type=_str2bool, nargs="?", const=True, default=None,
        help="True: the data is a `tide preprocess` folder; False: a chat JSONL aligned now",
    )
    ref.add_argument(
        "--mask_prompt_loss", type=_str2bool, nargs="?", const=True, default=None,
        help="False also trains on prompt tokens (raw data only; default True)",
    )
    ref.add_argument(
        "--truncation", choices=["right", "filter"], default=None,
        help="right: cut rows at max_length (default); filter: drop rows longer than max_length",
    )
    ref.add_argument("--num_proc", type=int, default=None, help="worker processes when aligning raw data")
    ref.add_argument(
        "--disable_caching", type=_str2bool, nargs="?", const=True, default=None, help="datasets.disable_caching()"
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
    """``(config fields, run options)``: preset < YAML < explicit flags.

    The ``demo`` preset is the default only when no model folder is given: a run on real
    checkpoints starts from the plain defaults (transformers' and the method's, docs/method.md#recipes), as the
    reference's launch lines do.
    """
    given = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    given = {k: v for k, v in given.items() if v is not None or k not in _RUN_KEYS}
    yaml_opts = _load_yaml(given["config"]) if given.get("config") else {}
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
    run_keys = set(_RUN_KEYS) | {"teacher_arch", "study_assets"}
    unknown = set(merged) - names - run_keys
    if unknown:
        hints = "".join(did_you_mean(u, names | run_keys) for u in sorted(unknown))
        raise ValueError(f"unknown options {sorted(unknown)}{hints}; see `tide distill --help`")
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
        from ..checkpoints import load_student, training_dtype

        return load_student(run["model_name_or_path"], attn_implementation=impl, dtype=training_dtype(config.dtype))
    from ..tiny import tiny_qwen3

    return tiny_qwen3(
        len(tok),
        hidden_size=int(run.get("tiny_hidden_size") or 32),
        attn_implementation=impl,
        seed=config.seed,
        **_special_ids(tok),
    )


def _saved_dtype(folder: str | None) -> str | None:
    """The dtype a student folder's ``config.json`` records (``None`` when unknown)."""
    try:
        fields = json.loads((Path(str(folder)) / "config.json").read_text()) if folder else {}
    except (OSError, ValueError):
        return None
    value = fields.get("dtype") or fields.get("torch_dtype")
    return value if isinstance(value, str) else None


def _teacher(run: Mapping[str, Any], tok: Any, config: DistillConfig, needed: bool) -> torch.nn.Module | str | None:
    if not needed:  # CE only: no teacher is loaded or built
        return None
    if run.get("teacher_model_name_or_path"):
        return run["teacher_model_name_or_path"]
    from ..tiny import tiny_qwen3, tiny_qwen3_moe

    build = tiny_qwen3_moe if run.get("teacher_arch", "qwen3_moe") == "qwen3_moe" else tiny_qwen3
    return build(len(tok), hidden_size=int(run.get("tiny_hidden_size") or 32), seed=config.seed + 1, **_special_ids(tok))


def _check_before_heavy_work(config: DistillConfig, run: Mapping[str, Any]) -> tuple[str | None, bool]:
    """Everything that can be checked without a tokenizer or a model; returns the
    checkpoint to resume from and whether the objective reads a teacher."""
    from ..batch import PipelineInfo
    from ..registry import get_objective
    from .distill_checks import check_output_dir, resolve_resume
    from .distill_data import check_data_path

    for key, what in (("model_name_or_path", "student"), ("teacher_model_name_or_path", "teacher")):
        if run.get(key):
            check_model_folder(run[key], what)
    check_data_path(run)
    if config.pipeline is None:
        raise ValueError(f"objective {config.objective!r} implies no pipeline; pass --pipeline same | shared | cross")
    with warnings.catch_warnings():  # the trainer's own build reports them
        warnings.simplefilter("ignore", UserWarning)
        objective = get_objective(config.objective, **config.objective_kwargs())
    # a run whose objective requires W gets it (loaded with the data or built from the tokenizers)
    objective.check_pipeline(PipelineInfo(pipeline=config.pipeline, shared_vocab_size=config.shared_vocab_size,
                                          has_projection="projection" in objective.requirements))
    if run_arms(run, config):
        from .distill_arms import check_arms

        check_arms(config, run_arms(run, config))
    resume = resolve_resume(config.resume_from_checkpoint, config.output_dir)
    check_output_dir(config.output_dir, overwrite=bool(config.overwrite_output_dir), resume=resume is not None)
    check_writable(config.output_dir)
    return resume, bool(getattr(objective, "reads_teacher", True))


def canonical_objective(objective: str) -> str:
    """Registered names of an objective string (aliases resolved): ``taid_aligned`` -> ``tidal``."""
    from ..registry import get_registry

    reg = get_registry()
    return "+".join(reg.resolve("objective", p).name for p in objective.split("+"))


def run_arms(run: Mapping[str, Any], config: DistillConfig) -> list[str]:
    """The comparison students of ``--demo_arms`` (control first), none when it is empty."""
    from ..eval.comparison import comparison_arms

    return comparison_arms(run.get("demo_arms"), canonical_objective(config.objective))


def _say(message: str) -> None:
    print(f"tide distill: {message}", flush=True)


def distill(options: Mapping[str, Any], run: Mapping[str, Any]) -> dict[str, Any]:
    """Run a distillation from resolved options; returns the metrics written."""
    start = time.time()
    config = CliDistillConfig(**options)
    resume, reads_teacher = _check_before_heavy_work(config, run)
    record = new_run(config, check_resume(resume, config.output_dir, config.max_steps) if resume else None)
    for note in config.reference_notes():
        _say(f"note: {note}")
    own_models = [k for k in ("model_name_or_path", "teacher_model_name_or_path", "student_tokenizer",
                              "teacher_tokenizer") if run.get(k)]
    if run.get("study_assets") and own_models:  # shipped models only fit the shipped tokenizers
        _say(f"the demo's shipped models are not used: {', '.join('--' + k for k in own_models)} given")
    elif run.get("study_assets"):  # the demos: shipped trained teacher, tokenizers, student init, data
        from ..shipped import demo_assets

        try:
            assets = demo_assets(str(run["study_assets"]))
        except FileNotFoundError as exc:  # a source checkout without the shipped weights
            print(f"tide distill: {exc}; falling back to tiny randomly initialised models")
            assets = dict(FALLBACK_TOKENIZERS[str(run["study_assets"])])
        run = {**assets, **{k: v for k, v in run.items() if v is not None}}
    if run_arms(run, config) and not run.get("heldout"):
        if not run.get("study_assets"):
            raise ValueError(
                f"--demo_arms {run['demo_arms']!r} compares students on held-out data; give --heldout chat.jsonl "
                "(or --demo_arms '' for no comparison)"
            )
        _say("note: no held-out rows to compare students on; the CE-only control and --demo_arms are not trained")
        run = {**run, "demo_arms": None}
    student_spec = run.get("student_tokenizer") or run.get("model_name_or_path") or "offline:qwen"
    teacher_spec = run.get("teacher_tokenizer") or run.get("teacher_model_name_or_path") or "offline:mistral"
    if config.pipeline == "same":  # one tokenizer: the teacher reads the student's ids
        teacher_spec = student_spec
    student_tok = _tokenizer(student_spec)
    teacher_tok = student_tok if teacher_spec == student_spec else _tokenizer(teacher_spec)
    from ..alignment import resolve_mask_id

    student_mask = resolve_mask_id(student_tok)
    if run.get("study_assets") == "B" and config.shared_vocab_size is None:
        # the shipped teacher reads the student's whole vocabulary; the offline stand-in, Qwen's shared ids
        from ..offline import QWEN_SHARED_VOCAB_SIZE

        config.shared_vocab_size = QWEN_SHARED_VOCAB_SIZE if student_spec == "offline:qwen" else len(student_tok)
    if config.teacher_mask_token_id is None and (config.pipeline is None or get_pipeline(config.pipeline).has_teacher_ids):
        config.teacher_mask_token_id = resolve_mask_id(teacher_tok)
    from .distill_data import load_run_dataset

    dataset, notes = load_run_dataset(
        run, config, {"student": (student_tok, student_spec), "teacher": (teacher_tok, teacher_spec)}
    )
    for note in notes:
        _say(note)
    data = run.get("data")
    data_dir = str(data) if data and Path(str(data)).is_dir() else None
    projection = run_projection(config, teacher_tok, student_tok, say=_say, data_dir=data_dir)
    student = _student(run, student_tok, config)
    _say(settle_student_dtype(student, config, saved=_saved_dtype(run.get("model_name_or_path"))))
    arms = run_arms(run, config)
    if arms and resume:
        _say(f"note: the comparison students {arms} are not trained when resuming (they would not be paired)")
        arms = []
    teacher = _teacher(run, teacher_tok, config, reads_teacher or bool(arms))
    init = copy.deepcopy(student) if arms else None

    shared = {"teacher": teacher, "W": projection}  # loaded or built once, for every student of the run

    def build(cfg: DistillConfig, model: torch.nn.Module) -> Any:
        if shared["W"] is None and cfg is not config:  # W belongs to the tokenizer pair, not the objective
            shared["W"] = run_projection(cfg, teacher_tok, student_tok, say=None, data_dir=data_dir)
        built = build_trainer(cfg, student=model, teacher_model=shared["teacher"], train_dataset=dataset,
                              student_tokenizer=student_tok, student_mask_id=student_mask, teacher_tokenizer=teacher_tok,
                              backend=run.get("backend") or "auto", projection=shared["W"])
        if built.teacher is not None and not config.teacher_load_in_4bit:
            # the frozen teacher is read from its folder once, not once per student (a 4-bit teacher
            # is quantised while it loads, so the adapter takes only its folder)
            shared["teacher"] = built.teacher.model
        return built

    trainer = build(config, student)
    objective = canonical_objective(config.objective)
    _say(
        f"{type(trainer).__name__}, objective {objective!r}, pipeline {config.pipeline!r}, "
        f"teacher {config.teacher if reads_teacher else 'none (CE only)'!r}, "
        f"collators {config.collator_names()}, -> {config.output_dir}"
        + (f" (resuming {resume})" if resume else "")
    )
    heldout: dict[str, Any] = {}
    curves: dict[str, list] = {}
    score_student = None
    if run.get("heldout"):
        from ..eval.heldout import heldout_scorer

        score_student, score_teacher = heldout_scorer(run["heldout"], student_tok, teacher_tok,
                                                      block_size=int(config.block_size))
        if trainer.teacher is not None:  # read by its adapter, as the run reads it
            heldout["teacher_bpb"] = score_teacher(trainer.teacher).bpb
        before = score_student(student.to(trainer.args.device))
        heldout["student_bpb_before"] = before.bpb

    def train(run_trainer: Any, label: str) -> tuple[Any, list]:
        """Train; with held-out data, the final score and the curve (every quarter of the
        steps). The run's own student trains in its owned folder (run record, interrupts,
        a resumed run's curve continues the saved one); comparison students train apart."""
        own = run_trainer is trainer
        curve: list = saved_curve(resume) if own else []
        if score_student is not None:
            from ..training.heldout import heldout_callback

            if not curve:
                curve.append((0, before.bpb))
            run_trainer.add_callback(heldout_callback(score_student, max(1, config.max_steps // 4), curve))
        if own:
            train_owned(trainer, config, record, curve, resume, say=_say)
        else:
            run_trainer.train()
        if score_student is None:
            return None, curve
        after = score_student(run_trainer.model)
        if not curve or curve[-1][0] != run_trainer.state.global_step:
            curve.append((run_trainer.state.global_step, after.bpb))
        return after, curve

    after, curves[objective] = train(trainer, objective)
    if heldout:
        from ..eval.heldout import paired_change

        heldout["student_bpb_after"] = after.bpb
        heldout["student_bpb_change"], heldout["student_bpb_change_se"] = paired_change(before, after)
    compared: dict[str, Any] = {}
    if arms:
        from ..eval.comparison import CONTROL, versus_control
        from .distill_arms import curves_by_label, train_arms

        others = train_arms(arms, config, init=init, build=build, train=train, say=_say)
        curves = curves_by_label(objective, curves[objective], others)
        results = {objective: after, **{a: r for a, (r, _) in others.items()}}
        control = results.pop(CONTROL)
        heldout["ce_only_bpb_after"] = control.bpb
        heldout["arms"] = compared = versus_control(control, results)
    if heldout:
        print("tide distill: held-out bits per byte " + json.dumps({"heldout": heldout}))
    trainer.save_model(config.output_dir)
    metrics = {}
    if trainer.is_world_process_zero():
        metrics = write_metrics(
            trainer,
            config.output_dir,
            {
                "objective": objective,
                "objective_as_given": config.objective,
                "pipeline": config.pipeline,
                "preset": run.get("preset"),
                "examples": len(dataset),
                "resumed_from": resume,
                "wall_seconds": round(time.time() - start, 2),
                **({"heldout": heldout, "heldout_curve": curves[objective]} if heldout else {}),
                **({"heldout_curves": curves} if compared else {}),
            },
        )
        _say(f"wrote the student, metrics.json and loss.png to {config.output_dir} in {time.time() - start:.1f} s")
        if compared:
            from ..eval.comparison import verdict

            print(f"held-out bits per byte against the CE-only control ({heldout['ce_only_bpb_after']:.4f}; "
                  f"before training {heldout['student_bpb_before']:.4f}), paired over the same sequences and noise:")
            for name, entry in compared.items():
                print(verdict(name, entry), flush=True)
    return metrics


def run(args: argparse.Namespace) -> int:
    from . import invocation

    options, run_opts = resolve_options(args)
    try:
        distill(options, run_opts)
    except RunInterrupted as stop:
        _say(f"interrupted at step {stop.step}; resume with: {resume_command(invocation(), stop.checkpoint)}")
        return stop.exit_code
    return 0
