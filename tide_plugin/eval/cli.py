"""``tide eval``: evaluate a BD3LM student with lm-evaluation-harness.

Two ways to choose what runs:

* ``--suite paper`` (or ``--suite path/to/suite.yaml``): a suite's tasks, each with
  its own protocol (generation length, steps, shots, chat template, think block),
  one results file per task (a rerun skips finished tasks; ``--overwrite`` redoes
  them) and the suite's table beside its published columns, as JSON and Markdown.
* ``--tasks a,b``: lm-eval task names with one protocol for all (block 32, no CFG,
  one token per denoising step). This package ships offline tasks
  (``humaneval_offline``, ``humaneval_offline_instruct``, ``tide_smoke``) and the
  paper's ``mmlu_generative_dream``, ``hellaswag_gen`` and ``mbpp_offline_instruct``.

Offline by default: the hub is not reached (``HF_HUB_OFFLINE=1`` for the run) unless
``--online``; a task whose data is neither in ``--data-dir`` nor in the local cache
is skipped with one line (``--no-skip-missing-data`` makes it an error), and the
suite's table is marked partial. Rows scored on part of a task (``--limit``) read
``MMLU (n=2 of 5)`` in every table.

Several processes: ``accelerate launch -m tide_plugin.cli eval ...`` splits each
task's requests across them and merges the results on rank 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .taskdefs import OFFLINE_TASKS, SHIPPED_TASKS, TASKS_DIR  # noqa: F401  - TASKS_DIR is part of the API

CODE_TASKS = ("humaneval_offline", "humaneval_offline_instruct", "mbpp_offline_instruct")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="runs/demo", help="student checkpoint directory (default: runs/demo)")
    _add_selection_arguments(parser)
    _add_sampling_arguments(parser)
    from .decoders import add_decoder_arguments

    add_decoder_arguments(parser)
    _add_run_arguments(parser)


def _add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("what to evaluate")
    group.add_argument("--suite", default=None,
                       help="a shipped suite (paper: the paper's eight benchmarks) or a suite .yaml file")
    group.add_argument("--tasks", default=None,
                       help=f"comma-separated lm-eval task names (default: humaneval_offline); shipped here: "
                            f"{', '.join(SHIPPED_TASKS)}")
    group.add_argument("--list-tasks", action="store_true", help="print every task name and exit")
    group.add_argument("--limit", type=float, default=None, help="documents per task (int) or fraction (< 1)")
    group.add_argument("--data-dir", default=None,
                       help="local datasets: DIR/<dataset_path>/<dataset_name or default>/<split>.jsonl")
    group.add_argument("--online", action="store_true",
                       help="let lm-eval and datasets reach the hub (default: offline, HF_HUB_OFFLINE=1 for the run)")
    group.add_argument("--skip-missing-data", action=argparse.BooleanOptionalAction, default=None,
                       help="skip a task whose data is not local, one line each, and mark the table partial "
                            "(default: on when offline; --no-skip-missing-data makes it an error)")
    group.add_argument("--include-path", action="append", default=[], help="another folder of task YAMLs")
    group.add_argument("--num-fewshot", type=int, default=None, help="--tasks only")
    group.add_argument("--apply-chat-template", action="store_true", help="--tasks only: render prompts as chat")
    group.add_argument("--gen-kwargs", default=None,
                       help="--tasks only: override generation arguments, e.g. max_gen_toks=64,until=\\n (lm-eval syntax)")


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--batch-size", type=int, default=8)
    group.add_argument("--block-size", type=int, default=None, help="default: the checkpoint's, else 32")
    steps = group.add_mutually_exclusive_group()
    steps.add_argument("--steps", type=int, default=None,
                       help="denoising steps per request (default: max_gen_toks, one token per step)")
    steps.add_argument("--steps-per-block", type=int, default=None)
    group.add_argument("--remasking", choices=["low_confidence", "random"], default="low_confidence")
    group.add_argument("--temperature", type=float, default=0.0)
    group.add_argument("--max-gen-toks", type=int, default=256, help="for tasks that set no max_gen_toks")
    group.add_argument("--cfg-scale", type=float, default=0.0, help="classifier-free guidance (only 0, the paper's)")
    group.add_argument("--no-kv-cache", action="store_true", help="recompute clean context every step")
    group.add_argument("--no-think-injection", action="store_true",
                       help="no empty think block after the chat template's generation prompt (suites inject it)")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("running")
    group.add_argument("--device", default=None, help="default: cuda (one per process) if available, else cpu")
    group.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--output-dir", default="runs/eval", help="results go here (default: runs/eval)")
    group.add_argument("--overwrite", action="store_true", help="--suite: redo tasks whose results exist")
    group.add_argument("--log-samples", action="store_true", help="also write every prompt and answer")
    group.add_argument("--exec-timeout", type=float, default=10.0, help="seconds per generated program")
    group.add_argument("--exec-memory-mb", type=int, default=1024, help="address-space limit per program")
    group.add_argument("--allow-unsafe-code", action="store_true",
                       help="let lm-eval's own code tasks (humaneval, mbpp, ...) run generated code in this "
                            "process's children without limits; this package's code tasks never need it")


def _task_list(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    if not tasks:
        raise ValueError(f"--tasks {text!r} names no task")
    return tasks


def _check_common(args: argparse.Namespace) -> None:
    from .runtime import check_checkpoint_dir

    if args.cfg_scale != 0.0:
        raise ValueError(f"--cfg-scale {args.cfg_scale} is not supported; the paper's protocol uses 0")
    if args.suite and args.tasks:
        raise ValueError("give --suite or --tasks, not both")
    check_checkpoint_dir(args.model)


def _warn_code(tasks: list[str], args: argparse.Namespace) -> None:
    if any(t in CODE_TASKS or t.startswith(("humaneval", "mbpp")) for t in tasks):
        print(
            "tide eval: code tasks run model-written code, each program in its own process "
            f"(python -I, {args.exec_timeout:g} s, {args.exec_memory_mb} MiB, temporary directory); "
            "this limits runaway programs but is not a security sandbox",
            file=sys.stderr,
        )


def evaluate(args: argparse.Namespace) -> dict[str, Any] | None:
    """``--tasks``: lm-eval on the named tasks with one protocol; lm-eval's results
    dict on rank 0, with the sampler's statistics under ``"sampler"`` (decoder and
    options, ``tokens_per_call``, model calls), ``None`` on the others."""
    from .runner import make_lm, set_exec_limits, simple_evaluate
    from .taskdefs import TaskCatalog

    _check_common(args)
    tasks = _task_list(args.tasks or "humaneval_offline")
    # Indexing lm-eval's own task folder takes ~10 s: skip it when only our offline tasks are asked for.
    only_ours = not args.include_path and all(t in (*OFFLINE_TASKS, "tide_offline") for t in tasks)
    catalog = TaskCatalog(args.include_path, include_defaults=not only_ours)
    catalog.check(tasks)
    for t in tasks:
        catalog.require_generative(t)
    _warn_code(tasks, args)
    set_exec_limits(args)
    from .runner import build_tasks

    by_name, skipped = build_tasks(catalog, [(t, t) for t in tasks], args)
    if not by_name:
        raise FileNotFoundError(
            f"no task has local data (skipped: {', '.join(f'{k} ({v})' for k, v in skipped.items())}); "
            "pass --data-dir DIR with DIR/<dataset>/<split>.jsonl, or run with --online"
        )
    built = [task for t in tasks for task in by_name.get(t, [])]
    lm = make_lm(args, think_injection=args.apply_chat_template and not args.no_think_injection)
    results = simple_evaluate(
        lm, built, args,
        num_fewshot=args.num_fewshot,
        gen_kwargs=args.gen_kwargs,
        apply_chat_template=args.apply_chat_template,
        fewshot_as_multiturn=False,
    )
    if results is not None:
        results["tide_skipped"] = skipped
        results["sampler"] = lm.sampler_stats.as_dict()
        mark_limited(results)
    return results


def mark_limited(results: dict[str, Any]) -> list[str]:
    """Append ``(n=2 of 164)`` to the table name (lm-eval's ``alias``) of each task
    scored on fewer documents than it has (``--limit``); the marked names."""
    marked = []
    for task, counts in (results.get("n-samples") or {}).items():
        n, total = int(counts.get("effective", 0)), int(counts.get("original", 0))
        row = (results.get("results") or {}).get(task)
        if row is not None and 0 < total and n < total:
            row["alias"] = f"{row.get('alias', task)} (n={n} of {total})"
            marked.append(task)
    return marked


def write_results(results: dict[str, Any], output_dir: str | Path, model: str) -> Path:
    """``results_<time>.json`` (and ``samples_<task>_<time>.jsonl`` when logged)."""
    from lm_eval.utils import handle_non_serializable

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    samples = results.pop("samples", None)
    path = out / f"results_{stamp}.json"
    payload = dict(results, tide={"model": str(model)})
    path.write_text(json.dumps(payload, indent=2, default=handle_non_serializable, ensure_ascii=False))
    for task, rows in (samples or {}).items():
        with open(out / f"samples_{task}_{stamp}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, default=handle_non_serializable, ensure_ascii=False) + "\n")
    return path


def run(args: argparse.Namespace) -> int:
    from .runtime import hub_access, lm_eval_notes

    with hub_access(online=args.online), lm_eval_notes():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    if args.list_tasks:
        from .taskdefs import TaskCatalog

        print("\n".join(sorted(TaskCatalog(args.include_path).manager.all_tasks)))
        return 0
    if args.suite:
        from .runner import run_suite
        from .suite import load_suite

        suite = load_suite(args.suite)
        _check_common(args)
        _warn_code([t.task for t in suite.tasks], args)
        run_suite(args, suite)
        return 0
    from lm_eval.utils import make_table

    results = evaluate(args)
    if results is None:  # not the main process
        return 0
    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    print(f"sampler: {json.dumps(results['sampler'])}")
    skipped = results.get("tide_skipped") or {}
    if skipped:
        print(f"partial: skipped for lack of local data: {', '.join(f'{k} ({v})' for k, v in skipped.items())}")
    path = write_results(results, args.output_dir, args.model)
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="tide eval")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
