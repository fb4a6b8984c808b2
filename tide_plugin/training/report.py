"""The run report: ``metrics.json`` and ``loss.png`` next to a trained student, and
the console's short table of the key numbers while it trains."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import transformers
from transformers.trainer_callback import PrinterCallback, ProgressCallback

# logged keys that are not loss parts (the parts are everything else but lambda/ and stats/)
NOT_PARTS = ("loss", "grad_norm", "learning_rate", "epoch", "step", "progress")


def loss_parts(logs: Mapping[str, Any]) -> list[str]:
    """The loss parts of one log (``ce`` and each objective part), in logged order."""
    return [k for k in logs if k not in NOT_PARTS and not k.startswith(("lambda/", "stats/"))]


def console_numbers(logs: Mapping[str, Any], step: int, max_steps: int) -> dict[str, str]:
    """The few numbers the console shows for a training log: step, loss, each loss
    part (``ce`` first), lr. The full log goes to ``metrics.json``."""
    parts = loss_parts(logs)
    parts.sort(key=lambda k: k != "ce")
    out = {"step": f"{step}/{max_steps}" if max_steps > 0 else str(step)}
    for key in ("loss", *parts):
        value = logs[key]
        out[key] = f"{value:.4f}" if isinstance(value, (int, float)) else str(value)
    if "learning_rate" in logs:
        out["lr"] = f"{float(logs['learning_rate']):.2e}"
    return out


def summary_line(logs: Mapping[str, Any]) -> str:
    """A log that is not a training step (the end-of-training summary, an
    evaluation): its numbers as ``key value`` pairs on one line."""
    items = [(k, v) for k, v in logs.items() if k != "total_flos" and isinstance(v, (int, float))]
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in items)


class ConsoleTable:
    """Rows of fixed-width columns; the header is printed again when the columns change."""

    def __init__(self) -> None:
        self.columns: list[str] = []
        self.widths: list[int] = []

    def lines(self, numbers: Mapping[str, str]) -> list[str]:
        out = []
        if list(numbers) != self.columns:
            self.columns = list(numbers)
            self.widths = [max(len(k), len(numbers[k]), 9) for k in self.columns]
            out.append("  ".join(k.rjust(w) for k, w in zip(self.columns, self.widths)))
        out.append("  ".join(numbers[k].rjust(w) for k, w in zip(self.columns, self.widths)))
        return out


class TideProgressCallback(ProgressCallback):
    """transformers' progress bar, with one short table row per log above it in
    place of the whole log dict."""

    def __init__(self) -> None:
        super().__init__()
        self.table = ConsoleTable()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        if "loss" not in logs:
            self.training_bar.write(summary_line(logs))
            return
        for line in self.table.lines(console_numbers(logs, state.global_step, state.max_steps)):
            self.training_bar.write(line)


class TidePrinterCallback(PrinterCallback):
    """Without a progress bar (``disable_tqdm``): the same short table rows, printed."""

    def __init__(self) -> None:
        super().__init__()
        self.table = ConsoleTable()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_local_process_zero or not logs:
            return
        if "loss" not in logs:
            print(summary_line(logs))
            return
        for line in self.table.lines(console_numbers(logs, state.global_step, state.max_steps)):
            print(line)


def use_console_table(trainer: transformers.Trainer) -> None:
    """Swap transformers' log printers (a dict of every key per log) for the short table."""
    for old, new in ((ProgressCallback, TideProgressCallback), (PrinterCallback, TidePrinterCallback)):
        for cb in list(trainer.callback_handler.callbacks):
            if type(cb) is old:
                trainer.remove_callback(cb)
                trainer.add_callback(new())


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
    parts = sorted({k for h in history for k in loss_parts(h)})
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
