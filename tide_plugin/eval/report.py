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


def build_table(suite: Suite, scores: dict[str, dict[str, Any]], skipped: dict[str, str] | None = None) -> dict[str, Any]:
    """``{"rows": [...], "average": {...}, "columns": [...], "partial": bool, "skipped": {...}}``
    in the suite's task order. ``skipped`` maps the rows not run to the dataset they
    lacked; a table with any is partial, and its ``ours`` average is left empty. A
    row scored on fewer documents than the task has (``--limit``) is ``limited``."""
    skipped = dict(skipped or {})
    columns = [*suite.published, "ours"]
    rows = []
    for t in suite.tasks:
        row: dict[str, Any] = {"task": t.name, "label": t.label}
        for col, vals in suite.published.items():
            row[col] = vals.get(t.name)
        got = scores.get(t.name, {})
        row["ours"], row["n"], row["n_total"] = got.get("score"), got.get("n"), got.get("n_total")
        row["limited"] = bool(row["n"] is not None and row["n_total"] and row["n"] < row["n_total"])
        if t.name in skipped:
            row["skipped"] = skipped[t.name]
        rows.append(row)
    average: dict[str, float | None] = {}
    for col in columns:
        vals = [r[col] for r in rows]
        average[col] = None if any(v is None for v in vals) else sum(vals) / len(vals)
        if col in suite.published_average:
            average[col] = suite.published_average[col]
    return {"suite": suite.name, "columns": columns, "rows": rows, "average": average,
            "partial": bool(skipped), "skipped": skipped}


def row_label(row: dict[str, Any]) -> str:
    """The row's label, with ``(n=2 of 164)`` when it was scored on part of the task."""
    return f"{row['label']} (n={row['n']} of {row['n_total']})" if row.get("limited") else str(row["label"])


def to_markdown(table: dict[str, Any]) -> str:
    cols = table["columns"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    rows = table["rows"]
    lines = []
    skipped = table.get("skipped") or {}
    if skipped:
        labels = {r["task"]: r["label"] for r in rows}
        lines += [f"**Partial table**: {len(skipped)} of {len(rows)} tasks skipped for lack of local data: "
                  + ", ".join(f"{labels.get(k, k)} ({v})" for k, v in skipped.items()) + ".", ""]
    lines += ["| Benchmark | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for r in rows:
        lines.append(f"| {row_label(r)} | " + " | ".join(fmt(r[c]) for c in cols) + " |")
    lines.append("| Avg | " + " | ".join(fmt(table["average"][c]) for c in cols) + " |")
    if any(r.get("limited") for r in rows):
        lines += ["", "n=a of b: scored on a of the task's b documents (--limit); not comparable with full runs."]
    return "\n".join(lines) + "\n"


def write_table(table: dict[str, Any], output_dir: str | Path) -> tuple[Path, Path]:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    j, m = out / f"{table['suite']}_table.json", out / f"{table['suite']}_table.md"
    j.write_text(json.dumps(table, indent=2))
    m.write_text(to_markdown(table))
    return j, m
