"""``tide distill``: presets, flags (preset < ``--config`` YAML < command line), the
run's plan, models, tokenizers and data, then train and report.

The seams: options (:mod:`.distill_options`), the reference's model flags
(:mod:`.reference_args`), the run plan (:func:`tide_plugin.training.plan.plan_run`),
checks before heavy work (:mod:`.distill_checks`), tokenizers and models
(:mod:`.distill_models`), data (:mod:`.distill_data`), the run's folder
(:mod:`.distill_run`) and the comparison students (:mod:`.distill_arms`)."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import check_model_folder
from ..training import build_trainer, run_projection, write_metrics
from ..training.builders import settle_student_dtype
from ..training.plan import RunPlan, canonical_objective, plan_run
from .distill_models import RunTokenizers, build_student, build_teacher_model, demo_shared_vocab_size, saved_dtype
from .distill_options import add_arguments, resolve_options
from .distill_run import RunInterrupted, check_resume, check_writable, new_run, resume_command, saved_curve, train_owned
from .presets import ALT_TEMPLATE, FALLBACK_TOKENIZERS
from .reference_args import CliDistillConfig

__all__ = ["ALT_TEMPLATE", "add_arguments", "canonical_objective", "distill", "resolve_options", "run", "run_arms"]


def check_before_heavy_work(plan: RunPlan, run: Mapping[str, Any]) -> tuple[str | None, dict[str, RunPlan]]:
    """Everything that can be checked without a tokenizer or a model (the plan has built
    the objective and checked it against the pipeline); returns the checkpoint to resume
    from and the comparison students' plans."""
    from .distill_checks import check_output_dir, resolve_resume
    from .distill_data import check_data_path

    config = plan.config
    for key, what in (("model_name_or_path", "student"), ("teacher_model_name_or_path", "teacher")):
        if run.get(key):
            check_model_folder(run[key], what)
    check_data_path(run)
    arm_plans: dict[str, RunPlan] = {}
    if run_arms(run, config):
        from .distill_arms import check_arms

        arm_plans = check_arms(config, run_arms(run, config))
    resume = resolve_resume(config.resume_from_checkpoint, config.output_dir)
    check_output_dir(config.output_dir, overwrite=bool(config.overwrite_output_dir), resume=resume is not None)
    check_writable(config.output_dir)
    return resume, arm_plans


def run_arms(run: Mapping[str, Any], config: CliDistillConfig) -> list[str]:
    """The comparison students of ``--demo_arms`` (control first), none when it is empty."""
    from ..eval.comparison import comparison_arms

    return comparison_arms(run.get("demo_arms"), canonical_objective(config.objective))


def _say(message: str) -> None:
    print(f"tide distill: {message}", flush=True)


def demo_run(run: Mapping[str, Any]) -> dict[str, Any]:
    """The run options with the demos' shipped models, tokenizers and data filled in
    (``study_assets``), unless the run gives its own models or tokenizers."""
    run = dict(run)
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
    return run


def distill(options: Mapping[str, Any], run: Mapping[str, Any]) -> dict[str, Any]:
    """Run a distillation from resolved options; returns the metrics written."""
    start = time.time()
    run = demo_run(run)
    tokenizers = RunTokenizers(run)
    shared_vocab = demo_shared_vocab_size(run, options, tokenizers)  # decided before the config is built
    config = CliDistillConfig(**(options if shared_vocab is None else {**options, "shared_vocab_size": shared_vocab}))
    plan = plan_run(config)
    resume, arm_plans = check_before_heavy_work(plan, run)
    record = new_run(config, check_resume(resume, config.output_dir, config.max_steps) if resume else None)
    for note in config.reference_notes():
        _say(f"note: {note}")
    if run_arms(run, config) and not run.get("heldout"):
        if not run.get("study_assets"):
            raise ValueError(
                f"--demo_arms {run['demo_arms']!r} compares students on held-out data; give --heldout chat.jsonl "
                "(or --demo_arms '' for no comparison)"
            )
        _say("note: no held-out rows to compare students on; the CE-only control and --demo_arms are not trained")
        run = {**run, "demo_arms": None}
    tokenizers = tokenizers.for_pipeline(config.pipeline)
    student_spec, teacher_spec = tokenizers.student_spec, tokenizers.teacher_spec
    student_tok, teacher_tok = tokenizers.student, tokenizers.teacher
    # the run's ids, m_T among them, settled once (a teacher folder's config is read, not loaded)
    plan = plan.with_ids(student_tokenizer=student_tok, teacher_tokenizer=teacher_tok,
                         teacher_model=run.get("teacher_model_name_or_path"))
    from .distill_data import load_run_dataset

    dataset, notes = load_run_dataset(
        run, config, {"student": (student_tok, student_spec), "teacher": (teacher_tok, teacher_spec)}
    )
    for note in notes:
        _say(note)
    data = run.get("data")
    data_dir = str(data) if data and Path(str(data)).is_dir() else None
    projection = run_projection(plan, teacher_tok, student_tok, say=_say, data_dir=data_dir)
    student = build_student(run, student_tok, config)
    _say(settle_student_dtype(student, config, saved=saved_dtype(run.get("model_name_or_path"))))
    arms = run_arms(run, config)
    if arms and resume:
        _say(f"note: the comparison students {arms} are not trained when resuming (they would not be paired)")
        arms = []
    teacher = build_teacher_model(run, teacher_tok, config, plan.reads_teacher or bool(arms))
    init = copy.deepcopy(student) if arms else None

    shared = {"teacher": teacher, "W": projection}  # loaded or built once, for every student of the run

    def build(cfg: CliDistillConfig, model: torch.nn.Module) -> Any:
        # the run's own plan, or the comparison student's planned in the checks, for its folder
        run_plan = plan if cfg is config else dataclasses.replace(arm_plans[cfg.objective], config=cfg)
        if shared["W"] is None and run_plan.needs_projection:  # W belongs to the tokenizer pair, not the objective
            shared["W"] = run_projection(run_plan, teacher_tok, student_tok, say=None, data_dir=data_dir)
        built = build_trainer(plan=run_plan, student=model, teacher_model=shared["teacher"], train_dataset=dataset,
                              student_tokenizer=student_tok, teacher_tokenizer=teacher_tok,
                              backend=run.get("backend") or "auto", projection=shared["W"])
        if built.teacher is not None and not config.teacher_load_in_4bit:
            # the frozen teacher is read from its folder once, not once per student (a 4-bit teacher
            # is quantised while it loads, so the adapter takes only its folder)
            shared["teacher"] = built.teacher.model
        return built

    trainer = build(config, student)
    objective = plan.objective_name
    _say(
        f"{type(trainer).__name__}, objective {objective!r}, pipeline {plan.pipeline!r}, "
        f"teacher {config.teacher if plan.reads_teacher else 'none (CE only)'!r}, "
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
