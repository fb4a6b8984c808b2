"""``tide eval``: evaluate a BD3LM student with lm-evaluation-harness.

Registers the ``tide_bd3lm`` model, adds this package's offline tasks
(``humaneval_offline``, ``humaneval_offline_instruct``, ``tide_smoke``) to
lm-eval's task list, applies the paper's protocol as defaults (block 32, no
CFG, one token per denoising step: ``steps = max_gen_toks``, 256 for
HumanEval), prints lm-eval's results table and writes the results as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
OFFLINE_TASKS = ("humaneval_offline", "humaneval_offline_instruct", "tide_smoke")
CODE_TASKS = ("humaneval_offline", "humaneval_offline_instruct")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="runs/demo", help="student checkpoint directory (default: runs/demo)")
    parser.add_argument(
        "--tasks", default="humaneval_offline",
        help=f"comma-separated lm-eval task names; offline ones shipped here: {', '.join(OFFLINE_TASKS)}",
    )
    parser.add_argument("--limit", type=float, default=None, help="documents per task (int) or fraction (< 1)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=None, help="default: the checkpoint's, else 32")
    steps = parser.add_mutually_exclusive_group()
    steps.add_argument("--steps", type=int, default=None,
                       help="denoising steps per request (default: max_gen_toks, one token per step)")
    steps.add_argument("--steps-per-block", type=int, default=None)
    parser.add_argument("--remasking", choices=["low_confidence", "random"], default="low_confidence")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max-gen-toks", type=int, default=256, help="for tasks that set no max_gen_toks")
    parser.add_argument("--cfg-scale", type=float, default=0.0, help="classifier-free guidance (only 0, the paper's)")
    parser.add_argument("--no-kv-cache", action="store_true", help="recompute clean context every step")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    parser.add_argument("--gen-kwargs", default=None,
                        help="override every task's generation arguments, e.g. max_gen_toks=64,until=\\n (lm-eval syntax)")
    parser.add_argument("--num-fewshot", type=int, default=None)
    parser.add_argument("--apply-chat-template", action="store_true", help="render prompts with the chat template")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="runs/eval", help="results JSON goes here (default: runs/eval)")
    parser.add_argument("--log-samples", action="store_true", help="also write every prompt and answer")
    parser.add_argument("--include-path", action="append", default=[], help="another folder of task YAMLs")
    parser.add_argument("--exec-timeout", type=float, default=10.0, help="seconds per HumanEval program")
    parser.add_argument("--exec-memory-mb", type=int, default=1024, help="address-space limit per program")
    from .decoders import add_decoder_arguments

    add_decoder_arguments(parser)


def _task_list(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    if not tasks:
        raise SystemExit(f"tide eval: --tasks {text!r} names no task")
    return tasks


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run lm-eval with the ``tide_bd3lm`` model; returns lm-eval's results dict."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from . import lm_eval_model  # noqa: F401  - registers tide_bd3lm
    from .decoders import decoder_model_args

    if args.cfg_scale != 0.0:
        raise SystemExit(f"tide eval: --cfg-scale {args.cfg_scale} is not supported; the paper's protocol uses 0")
    if not Path(args.model).is_dir():
        raise SystemExit(
            f"tide eval: --model {args.model!r} is not a checkpoint directory; train one with `tide distill` "
            "(writes runs/demo) or point at a save_pretrained folder"
        )
    tasks = _task_list(args.tasks)
    os.environ["TIDE_EXEC_TIMEOUT_S"] = str(args.exec_timeout)
    os.environ["TIDE_EXEC_MEMORY_MB"] = str(args.exec_memory_mb)
    if any(t in CODE_TASKS for t in tasks):
        print(
            "tide eval: HumanEval runs model-written code, each program in its own process "
            f"(python -I, {args.exec_timeout:g} s, {args.exec_memory_mb} MiB, temporary directory); "
            "this limits runaway programs but is not a security sandbox",
            file=sys.stderr,
        )
    # Indexing lm-eval's own task folder takes ~10 s: skip it when only our offline tasks are asked for.
    only_ours = not args.include_path and all(t in (*OFFLINE_TASKS, "tide_offline") for t in tasks)
    manager = TaskManager(include_path=[str(TASKS_DIR), *args.include_path], include_defaults=not only_ours)
    model_args: dict[str, Any] = {
        "pretrained": args.model,
        "block_size": args.block_size,
        "steps": args.steps,
        "steps_per_block": args.steps_per_block,
        "remasking": args.remasking,
        "temperature": args.temperature,
        "max_gen_toks": args.max_gen_toks,
        "dtype": args.dtype,
        "use_cache": not args.no_kv_cache,
        "seed": args.seed,
        **decoder_model_args(args),
    }
    model_args = {k: v for k, v in model_args.items() if v is not None}
    limit = args.limit
    if limit is not None and limit >= 1:
        limit = int(limit)
    return lm_eval.simple_evaluate(
        model="tide_bd3lm",
        model_args=model_args,
        tasks=tasks,
        num_fewshot=args.num_fewshot,
        gen_kwargs=args.gen_kwargs,
        batch_size=args.batch_size,
        device=args.device,
        limit=limit,
        task_manager=manager,
        log_samples=args.log_samples,
        apply_chat_template=args.apply_chat_template,
        confirm_run_unsafe_code=True,  # our code tasks run programs in limited processes (see above)
        random_seed=args.seed,
        numpy_random_seed=args.seed,
        torch_random_seed=args.seed,
        fewshot_random_seed=args.seed,
    )


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
    from lm_eval.utils import make_table

    results = evaluate(args)
    if results is None:  # not the main process
        return 0
    from .lm_eval_model import sampler_summary

    results["sampler"] = sampler_summary()
    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    print(f"sampler: {json.dumps(results['sampler'])}")
    path = write_results(results, args.output_dir, args.model)
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="tide eval")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
