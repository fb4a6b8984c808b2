"""The run report: ``metrics.json`` and ``loss.png`` next to a trained student."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import transformers


def _whole_run_train_loss(trainer: transformers.Trainer, checkpoint: Path, history: list[dict]) -> dict[str, Any]:
    """After a resume the Trainer's ``train_loss`` averages only the resumed steps: add
    the steps before the checkpoint from the logged losses (each a mean over its
    logging window), so ``train_loss`` covers the whole run."""
    state = checkpoint / "trainer_state.json"
    this_run = getattr(trainer, "_total_loss_scalar", None)
    if not state.is_file() or this_run is None:
        return {"train_loss_scope": "resumed steps only (the earlier steps' losses are unknown)"}
    start = int(json.loads(state.read_text()).get("global_step", 0))
    earlier, prev = 0.0, 0
    for h in history:
        if h["step"] > start:
            break
        earlier += float(h["loss"]) * (h["step"] - prev)
        prev = h["step"]
    total = int(trainer.state.global_step)
    if prev != start or total <= 0:
        return {"train_loss_scope": f"resumed steps only (no loss was logged at the resume step {start})"}
    return {"train_loss": (earlier + float(this_run)) / total, "train_loss_scope": f"whole run (steps 1-{total})"}


def write_metrics(trainer: transformers.Trainer, output_dir: str | os.PathLike[str], extra: Mapping[str, Any]) -> dict:
    """``metrics.json`` (per-step history of every logged part, final values) and
    ``loss.png`` (CE and every objective part against the step)."""
    out = Path(output_dir)
    history = [h for h in trainer.state.log_history if "loss" in h]
    summary = next((h for h in reversed(trainer.state.log_history) if "train_runtime" in h), {})
    skip = {"loss", "grad_norm", "learning_rate", "epoch", "step", "progress"}
    parts = sorted({k for h in history for k in h if k not in skip and not k.startswith(("lambda/", "stats/"))})
    summary = dict(summary)
    if extra.get("resumed_from"):
        summary.update(_whole_run_train_loss(trainer, Path(str(extra["resumed_from"])), history))
    metrics = {
        "history": history,
        "parts": parts,
        "final": history[-1] if history else {},
        "train": summary,
        **extra,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("tide distill: matplotlib is not installed; skipped loss.png (pip install matplotlib)")
        return metrics
    # one panel per part: CE and the objective parts live on very different scales
    # {label: [(step, student bits per byte)]}, when held-out data was given: the run's own
    # student, and with comparison students (tide distill --demo_arms) each of them too
    curves = extra.get("heldout_curves") or ({"student": extra["heldout_curve"]} if extra.get("heldout_curve") else {})
    panels = max(len(parts) + bool(curves), 1)
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.4), squeeze=False)
    if curves:
        ax = axes[0][len(parts)]
        for label, curve in curves.items():
            ax.plot([c[0] for c in curve], [c[1] for c in curve], marker="o", markersize=3, label=label)
        teacher = (extra.get("heldout") or {}).get("teacher_bpb")
        title = "held-out bits per byte"
        if teacher is not None and len(curves) == 1:
            ax.axhline(teacher, color="gray", linestyle="--", label="teacher")
        elif teacher is not None:  # students a few thousandths apart: the teacher's line would flatten them
            title += f" (teacher {teacher:.3f})"
        ax.set_title(title, fontsize=9 if len(curves) > 1 else None)
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax, name in zip(axes[0], parts):
        steps = [h["step"] for h in history if name in h]
        ax.plot(steps, [h[name] for h in history if name in h], marker="o", markersize=3)
        ax.set_title(name)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss part")
    fig.suptitle(f"tide distill: {extra.get('objective', '')}")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=110)
    plt.close(fig)
    return metrics
