"""Running tasks and suites: one model, every task with its own protocol, the
requests of each task split across processes (``accelerate launch``) and merged
on rank 0, finished tasks skipped on a rerun."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .suite import Suite, SuiteTask


def make_lm(args: argparse.Namespace, **overrides: Any) -> Any:
    """The ``tide_bd3lm`` model from the command line's settings."""
    from .decoders import decoder_model_args
    from .lm_eval_model import TideBD3LM

    kwargs: dict[str, Any] = {
        "block_size": args.block_size,
        "steps": args.steps,
        "steps_per_block": args.steps_per_block,
        "remasking": args.remasking,
        "temperature": args.temperature,
        "max_gen_toks": args.max_gen_toks,
        "batch_size": args.batch_size,
        "device": args.device,
        "dtype": args.dtype,
        "use_cache": not args.no_kv_cache,
        "seed": args.seed,
        "think_injection": not args.no_think_injection,
        **decoder_model_args(args),
    }
    kwargs.update(overrides)
    return TideBD3LM(pretrained=args.model, **{k: v for k, v in kwargs.items() if v is not None})


def set_exec_limits(args: argparse.Namespace) -> None:
    os.environ["TIDE_EXEC_TIMEOUT_S"] = str(args.exec_timeout)
    os.environ["TIDE_EXEC_MEMORY_MB"] = str(args.exec_memory_mb)


def simple_evaluate(lm: Any, tasks: list[Any], args: argparse.Namespace, **protocol: Any) -> dict[str, Any] | None:
    """lm-eval on built Task objects; ``None`` on ranks other than 0."""
    import lm_eval

    limit = args.limit
    if limit is not None and limit >= 1:
        limit = int(limit)
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        limit=limit,
        log_samples=args.log_samples,
        confirm_run_unsafe_code=args.allow_unsafe_code,
        random_seed=args.seed,
        numpy_random_seed=args.seed,
        torch_random_seed=args.seed,
        fewshot_random_seed=args.seed,
        **protocol,
    )


def skip_missing(args: argparse.Namespace) -> bool:
    """Whether a task without local data is skipped (one line each) rather than an
    error: ``--skip-missing-data`` / ``--no-skip-missing-data``, by default when
    offline (no ``--online``, or the environment says so)."""
    from .runtime import offline_by_environment

    choice = getattr(args, "skip_missing_data", None)
    if choice is not None:
        return bool(choice)
    return not getattr(args, "online", False) or offline_by_environment()


def build_tasks(catalog: Any, names: list[tuple[str, str]], args: argparse.Namespace) -> tuple[dict[str, list[Any]], dict[str, str]]:
    """``{row: built tasks}`` for each ``(row name, lm-eval task)`` and ``{row: dataset}``
    for those skipped for lack of data (when :func:`skip_missing`; else the first
    missing dataset is an error), each skip said in one line."""
    from .taskdefs import MissingDataError

    skip = skip_missing(args)
    built: dict[str, list[Any]] = {}
    skipped: dict[str, str] = {}
    for row, task in names:
        try:
            built[row] = catalog.build(task, args.data_dir)
        except MissingDataError as exc:
            if not skip:
                raise
            skipped[row] = exc.dataset
            if os.environ.get("RANK", "0") == "0":
                print(f"tide eval: {row}: skipped, no local data for {exc.dataset} (offline); put its splits in "
                      f"DATA_DIR/{exc.dataset}/<split>.jsonl and pass --data-dir, or run with --online",
                      file=sys.stderr)
    return built, skipped


def run_suite(args: argparse.Namespace, suite: Suite) -> dict[str, Any] | None:
    """Every task of ``suite`` that has data; returns the table on rank 0, ``None`` elsewhere."""
    from .report import build_table, task_score, to_markdown, write_table
    from .taskdefs import TaskCatalog

    catalog = TaskCatalog(args.include_path)
    for t in suite.tasks:  # every name and kind checked before a model is loaded
        catalog.check([t.task])
        catalog.require_generative(t.task)
    out = Path(args.output_dir)
    set_exec_limits(args)
    scores: dict[str, dict[str, Any]] = {}
    todo = []
    for t in suite.tasks:
        done = out / f"{t.name}.json"
        if done.is_file() and not args.overwrite:
            scores[t.name] = json.loads(done.read_text())["tide"]
            print(f"tide eval: {t.name}: results exist in {done}, skipped (--overwrite to redo)", file=sys.stderr)
        else:
            todo.append(t)
    # every task's data before the model loads: what is missing is known at once
    built, skipped = build_tasks(catalog, [(t.name, t.task) for t in todo], args)
    if skipped and not built and not scores:
        raise FileNotFoundError(
            f"suite {suite.name!r}: no task has local data (skipped: {', '.join(f'{k} ({v})' for k, v in skipped.items())}); "
            "pass --data-dir DIR with DIR/<dataset>/<split>.jsonl, or run with --online"
        )
    lm = None
    for t in todo:
        if t.name not in built:
            continue
        if lm is None:
            lm = make_lm(args, block_size=t.block_size, think_injection=t.think_injection and not args.no_think_injection)
        _apply_protocol(lm, t, args)
        start = time.monotonic()
        results = simple_evaluate(
            lm, built.pop(t.name), args,
            num_fewshot=t.num_fewshot,
            gen_kwargs=f"max_gen_toks={t.max_new_tokens}",
            apply_chat_template=t.chat_template,
            fewshot_as_multiturn=t.fewshot_as_multiturn and t.chat_template,
        )
        if lm.rank == 0 and results is not None:
            leaves = catalog.leaves(t.task)
            score, n = task_score(t, results, leaves)
            scores[t.name] = {"task": t.task, "score": score, "n": n, "n_total": document_count(results, leaves),
                              "metric": t.metric, "seconds": round(time.monotonic() - start, 1),
                              "processes": lm.world_size}
            _write_task(results, scores[t.name], out, t, args)
            of = f" of {scores[t.name]['n_total']}" if scores[t.name]["n_total"] > n else ""
            print(f"tide eval: {t.name}: {score:.2f} ({t.metric}, {n}{of} problems)", file=sys.stderr)
        lm.barrier()
    if lm is not None and lm.rank != 0:
        return None
    table = build_table(suite, scores, skipped=skipped)
    table["model"] = str(args.model)
    paths = write_table(table, out)
    print(to_markdown(table))
    print(f"results written to {paths[0]} and {paths[1]}")
    return table


def document_count(results: dict[str, Any], leaves: list[str]) -> int:
    """The documents the task has (lm-eval's ``n-samples.original``), summed over a group's subtasks."""
    counts = results.get("n-samples", {})
    return sum(int((counts.get(leaf) or {}).get("original", (counts.get(leaf) or {}).get("effective", 0))) for leaf in leaves)


def _apply_protocol(lm: Any, t: SuiteTask, args: argparse.Namespace) -> None:
    lm.steps = t.steps
    lm.steps_per_block = None
    lm.block_size = int(args.block_size or t.block_size)
    lm.think_injection = t.think_injection and not args.no_think_injection


def _write_task(results: dict[str, Any], score: dict[str, Any], out: Path, t: SuiteTask, args: argparse.Namespace) -> None:
    from lm_eval.utils import handle_non_serializable

    out.mkdir(parents=True, exist_ok=True)
    samples = results.pop("samples", None)
    for leaf, rows in (samples or {}).items():
        with open(out / f"samples_{leaf}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, default=handle_non_serializable, ensure_ascii=False) + "\n")
    payload = {"tide": score, "protocol": t.__dict__ | {"datasets": list(t.datasets)}, "model": str(args.model),
               "results": results.get("results"), "n-samples": results.get("n-samples"),
               "configs": results.get("configs")}
    tmp = out / f".{t.name}.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2, default=handle_non_serializable, ensure_ascii=False))
    tmp.replace(out / f"{t.name}.json")  # the rerun check never sees half a file
