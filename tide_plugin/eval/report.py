"""The suite's results table: our score per task and its average, beside the
published columns of the suite (the paper's), as JSON and Markdown."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .suite import Suite, SuiteTask


def task_score(task: SuiteTask, results: dict[str, Any], leaves: list[str]) -> tuple[float, int]:
    """The task's score x100 and its sample count: one task's metric, or a group's
    mean over its subtasks weighted by their sizes (lm-eval's ``weight_by_size``)."""
    per_task = results.get("results", {})
    counts = results.get("n-samples", {})
    total, n_all = 0.0, 0
    for leaf in leaves:
        row = per_task.get(leaf)
        if row is None or task.metric not in row:
            have = sorted(k for k in (row or {}) if "," in k and "_stderr" not in k)
            raise ValueError(f"task {task.name!r}: results for {leaf!r} have no {task.metric!r}; they have {have}")
        n = int((counts.get(leaf) or {}).get("effective", 1))
        total += float(row[task.metric]) * n
        n_all += n
    return (100.0 * total / n_all if n_all else math.nan), n_all


def build_table(suite: Suite, scores: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``{"rows": [...], "average": {...}, "columns": [...]}`` in the suite's task order."""
    columns = [*suite.published, "ours"]
    rows = []
    for t in suite.tasks:
        row = {"task": t.name, "label": t.label}
        for col, vals in suite.published.items():
            row[col] = vals.get(t.name)
        row["ours"] = scores.get(t.name, {}).get("score")
        row["n"] = scores.get(t.name, {}).get("n")
        rows.append(row)
    average: dict[str, float | None] = {}
    for col in columns:
        vals = [r[col] for r in rows]
        average[col] = None if any(v is None for v in vals) else sum(vals) / len(vals)
        if col in suite.published_average:
            average[col] = suite.published_average[col]
    return {"suite": suite.name, "columns": columns, "rows": rows, "average": average}


def to_markdown(table: dict[str, Any]) -> str:
    cols = table["columns"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines = ["| Benchmark | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in table["rows"]:
        lines.append(f"| {r['label']} | " + " | ".join(fmt(r[c]) for c in cols) + " |")
    lines.append("| Avg | " + " | ".join(fmt(table["average"][c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_table(table: dict[str, Any], output_dir: str | Path) -> tuple[Path, Path]:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    j, m = out / f"{table['suite']}_table.json", out / f"{table['suite']}_table.md"
    j.write_text(json.dumps(table, indent=2))
    m.write_text(to_markdown(table))
    return j, m
