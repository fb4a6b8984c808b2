"""The run report: ``metrics.json`` and ``loss.png`` next to a trained student."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import transformers

def write_metrics(trainer: transformers.Trainer, output_dir: str | os.PathLike[str], extra: Mapping[str, Any]) -> dict:
    """``metrics.json`` (per-step history of every logged part, final values) and
    ``loss.png`` (CE and every objective part against the step)."""
    out = Path(output_dir)
    history = [h for h in trainer.state.log_history if "loss" in h]
    summary = next((h for h in reversed(trainer.state.log_history) if "train_runtime" in h), {})
    skip = {"loss", "grad_norm", "learning_rate", "epoch", "step", "progress"}
    parts = sorted({k for h in history for k in h if k not in skip and not k.startswith(("lambda/", "stats/"))})
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
    fig, axes = plt.subplots(1, max(len(parts), 1), figsize=(4 * max(len(parts), 1), 3.4), squeeze=False)
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
