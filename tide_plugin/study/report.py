"""The study's numbers and outputs: paired statistics, ``study.md`` (the paper's table
laid out in miniature, arms as columns), ``study.png`` (held-out bits per byte against
step) and ``study.json``."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .arms import BASELINE


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample std / sqrt(n); NaN for one value)."""
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, float("nan")
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)


def summarise(runs: dict[str, dict[int, dict[str, Any]]], seeds: Sequence[int]) -> dict[str, Any]:
    """``{"arms": {name: {bpb_mean, bpb_se, bpb_seeds, diff_mean, diff_se, ...}}}``; the
    difference to ``BD3LM`` is paired by seed (same init, data order and noise)."""
    base = runs[BASELINE]
    arms = {}
    for name, per_seed in runs.items():
        order = [s for s in seeds if s in per_seed]
        if not order:
            continue
        bpb = [per_seed[s]["bpb"] for s in order]
        m, se = mean_se(bpb)
        diffs = [per_seed[s]["bpb"] - base[s]["bpb"] for s in order if s in base]
        dm, dse = mean_se(diffs) if diffs else (float("nan"), float("nan"))
        last = [per_seed[s]["log"][-1] for s in order if per_seed[s]["log"]]
        parts = sorted({k for h in last for k in h if k not in ("loss", "grad_norm", "learning_rate", "epoch", "step",
                                                                "progress") and not k.startswith("lambda/")})
        arms[name] = {
            "bpb_mean": m,
            "bpb_se": se,
            "bpb_seeds": bpb,
            "seeds": order,
            "eval_se_seeds": [per_seed[s]["eval_se"] for s in order],
            "diff_vs_bd3lm_mean": dm,
            "diff_vs_bd3lm_se": dse,
            "diff_vs_bd3lm_seeds": diffs,
            "steps": per_seed[order[0]]["steps"],
            "train_seconds_mean": sum(per_seed[s]["wall_seconds"] for s in order) / len(order),
            "final_loss_parts": {k: sum(h.get(k, 0.0) for h in last) / max(len(last), 1) for k in parts},
        }
    return {"arms": arms}


def _fmt(m: float, se: float) -> str:
    return f"{m:.3f} ± {se:.3f}" if not math.isnan(se) else f"{m:.3f}"


def _diff(m: float, se: float) -> str:
    if math.isnan(m):
        return "—"
    if math.isnan(se):
        return f"{m:+.3f}"
    mark = " *" if abs(m) > 2 * se else ""
    digits = 3 if se >= 5e-4 else 4  # a paired s.e. below the third decimal would print as 0.000
    return f"{m:+.{digits}f} ± {se:.{digits}f}{mark}"


def delta_row(arms: dict[str, dict[str, Any]]) -> str:
    """The table's row of paired differences to ``BD3LM`` (its own column: a dash)."""
    cells = ("—" if n == BASELINE else _diff(a["diff_vs_bd3lm_mean"], a["diff_vs_bd3lm_se"]) for n, a in arms.items())
    return f"| Δ vs {BASELINE} (paired by seed) | " + " | ".join(cells) + " |"


def markdown(result: dict[str, Any]) -> str:
    arms = result["arms"]
    names = list(arms)
    head = "| | " + " | ".join(names) + " |"
    sep = "|---|" + "---|" * len(names)
    rows = [
        "| held-out bits/byte (mean ± s.e. over seeds) | " + " | ".join(_fmt(arms[n]["bpb_mean"], arms[n]["bpb_se"]) for n in names) + " |",
        delta_row(arms),
        "| steps | " + " | ".join(str(arms[n]["steps"]) for n in names) + " |",
        "| train s / run | " + " | ".join(f"{arms[n]['train_seconds_mean']:.0f}" for n in names) + " |",
    ]
    seeds = max(len(a["bpb_seeds"]) for a in arms.values())
    t, tse = result["teacher_bpb"], result.get("teacher_bpb_se", {})
    p = result.get("params", {})
    cfg = result["config"]
    lines = [
        "# tide study: held-out bits per UTF-8 byte (lower is better)",
        "",
        head,
        sep,
        *rows,
        "",
        f"Teachers: A (bidirectional masked-diffusion MoE, cross tokenizer) {t['A']:.3f} ± {tse.get('A', float('nan')):.3f}; "
        f"B (block diffusion, x0_xt, shared vocabulary) {t['B']:.3f} ± {tse.get('B', float('nan')):.3f}. "
        f"Student init (BD3LM, {cfg['init_schedule']['steps']} CE steps): {result['student_init_bpb']:.3f}. "
        f"Teacher s.e. are Monte Carlo errors over held-out sequences.",
        "",
        f"Non-embedding parameters: student {p.get('student', 0) / 1e6:.2f}M, teacher A {p.get('teacher_A', 0) / 1e6:.2f}M "
        f"(MoE, total), teacher B {p.get('teacher_B', 0) / 1e6:.2f}M. {seeds} paired seeds (same init; data order and "
        f"noise per seed shared by all arms); `*`: |Δ| > 2 s.e. Bits per byte come from each model's own NELBO "
        f"({cfg['eval_samples']} stratified times per sequence) over {result['corpus'].get('heldout_rows', '?')} held-out "
        f"conversations from modules never seen in training (Python {result['python']} standard library and pydoc topics).",
        "",
        f"Pipeline A chunk coverage {result['alignment'].get('A_chunk_coverage', 0):.3f}; "
        f"machine: {result['machine'].get('cuda_device') or result['machine'].get('processor')} "
        f"({result['device']}, {result['machine'].get('torch_threads')} threads); "
        f"total {result.get('timings_seconds', {}).get('total', 0):.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def write_outputs(result: dict[str, Any], runs: dict[str, dict[int, dict[str, Any]]], out: Path) -> None:
    curves = {a: {str(s): r["curve"] for s, r in per.items()} for a, per in runs.items()}
    (out / "study.json").write_text(json.dumps({**result, "curves": curves}, indent=2, default=str) + "\n")
    (out / "study.md").write_text(markdown(result))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("tide study: matplotlib is not installed; skipped study.png (pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for arm, per in runs.items():
        series = [r["curve"] for r in per.values() if r["curve"]]
        if not series:
            continue
        steps = [s for s, _ in series[0]]
        mean = [sum(c[k][1] for c in series if k < len(c)) / len(series) for k in range(len(steps))]
        ax.plot(steps, mean, marker="o", markersize=2, label=arm, linestyle="--" if arm.startswith("BD3LM") else "-")
    for which, style in (("A", ":"), ("B", "-.")):
        ax.axhline(result["teacher_bpb"][which], color="gray", linestyle=style, linewidth=1, label=f"teacher {which}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("held-out bits per byte (curve subset, mean over seeds)")
    ax.set_title("tide study")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "study.png", dpi=110)
    plt.close(fig)
