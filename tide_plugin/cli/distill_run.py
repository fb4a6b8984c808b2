"""Nothing lost, nothing mixed up: which run owns an output folder, what an overwrite
removes, which checkpoints a resume may continue, and a save on Ctrl-C / SIGTERM.

An output folder is owned by one run: ``tide_run.json`` records its id, objective,
pipeline, ``max_steps`` and creation time, and every checkpoint carries a copy (with
the held-out curve so far, so a resumed run's curve covers the whole run).
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import transformers

RUN_FILE = "tide_run.json"
"""The run record: ``{"id", "objective", "pipeline", "max_steps", "created"}``."""
CURVE_FILE = "tide_heldout_curve.json"
"""In a checkpoint: the held-out ``[(step, bits per byte)]`` measured up to it."""
PREVIOUS_RUN_FILES = (RUN_FILE, "metrics.json", "loss.png", "tide_config.json")
"""What an overwrite removes besides the ``checkpoint-*`` folders (the rest of a saved
student is replaced by the new run's save)."""
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


# -- before any heavy work -------------------------------------------------------------
def check_writable(output_dir: str) -> None:
    """Create ``output_dir`` and write a probe file in it (then remove what was
    created), so a read-only or misnamed folder stops the run now, not at the final
    save after all the training."""
    out = Path(output_dir).expanduser()
    created = [p for p in (out, *out.parents) if not p.exists()]
    probe = out / f".tide-write-test-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
        for folder in created:  # leave nothing behind: the run creates them when it saves
            folder.rmdir()
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0, "")
        reason = f"{exc.strerror or exc}" + (f" ({code})" if code else "")
        raise PermissionError(f"output_dir {str(output_dir)!r} cannot be written: {reason}") from None


def read_run(folder: str | Path) -> dict[str, Any] | None:
    """The run record of an output folder or a checkpoint (``None`` when it has none)."""
    path = Path(folder) / RUN_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("id") else None


def describe(record: dict[str, Any] | None) -> str:
    if not record:
        return "an unrecorded run"
    return (f"run {record['id']} (objective {record.get('objective')!r}, max_steps {record.get('max_steps')}, "
            f"created {record.get('created')})")


def checkpoint_step(checkpoint: str | Path) -> int | None:
    state = Path(checkpoint) / "trainer_state.json"
    try:
        return int(json.loads(state.read_text()).get("global_step", 0))
    except (OSError, ValueError, TypeError):
        return None


def check_resume(checkpoint: str, output_dir: str, max_steps: int) -> dict[str, Any] | None:
    """A resume continues its own run: refuse a checkpoint of another run than the one
    ``output_dir`` records, and a ``max_steps`` that is not above the checkpoint's step.
    Returns the checkpoint's run record (the resumed run keeps its id)."""
    ckpt_run, folder_run = read_run(checkpoint), read_run(output_dir)
    if ckpt_run and folder_run and ckpt_run["id"] != folder_run["id"]:
        raise ValueError(
            f"--resume_from_checkpoint {checkpoint!r} belongs to {describe(ckpt_run)}, but output_dir {output_dir!r} "
            f"holds {describe(folder_run)}; resume that run's own checkpoint, or give another --output_dir"
        )
    step = checkpoint_step(checkpoint)
    if step is not None and int(max_steps) > 0 and int(max_steps) <= step:
        raise ValueError(
            f"--max_steps {max_steps} is not above the step of --resume_from_checkpoint {checkpoint!r} ({step}): "
            f"the resume would train nothing; give --max_steps above {step}"
        )
    return ckpt_run


def clear_previous_run(output_dir: str) -> list[str]:
    """For ``--overwrite_output_dir``: remove what an earlier run left that a later
    resume or report would read (its ``checkpoint-*`` folders, run record, metrics,
    plot); returns the names removed."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    removed = []
    for path in sorted(out.glob("checkpoint-*"), key=lambda p: (len(p.name), p.name)):
        if path.is_dir():
            shutil.rmtree(path)
            removed.append(path.name)
    for name in PREVIOUS_RUN_FILES:
        if (out / name).is_file():
            (out / name).unlink()
            removed.append(name)
    return removed


def new_run(config: Any, inherited: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record of this run (a resumed run keeps the id it continues)."""
    record = dict(inherited or {})
    record.setdefault("id", uuid.uuid4().hex[:12])
    record.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    record.update(objective=config.objective, pipeline=config.pipeline, max_steps=int(config.max_steps))
    return record


def write_run(folder: str | Path, record: dict[str, Any]) -> None:
    (Path(folder) / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")


def saved_curve(checkpoint: str | Path | None) -> list[tuple[int, float]]:
    """The held-out curve a checkpoint recorded (up to its step)."""
    if not checkpoint:
        return []
    try:
        points = json.loads((Path(checkpoint) / CURVE_FILE).read_text())
    except (OSError, ValueError):
        return []
    step = checkpoint_step(checkpoint)
    return [(int(s), float(v)) for s, v in points if step is None or int(s) <= step]


# -- while training ----------------------------------------------------------------------
class RunRecordCallback(transformers.TrainerCallback):
    """Every checkpoint gets the run record and the held-out curve so far."""

    def __init__(self, record: dict[str, Any], curve: list):
        self.record, self.curve = record, curve

    def on_save(self, args, state, control, **kwargs):  # noqa: ARG002
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"{transformers.trainer_utils.PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if folder.is_dir():
            write_run(folder, self.record)
            (folder / CURVE_FILE).write_text(json.dumps(self.curve) + "\n")


class InterruptCallback(transformers.TrainerCallback):
    """On SIGINT or SIGTERM: finish the step, save a checkpoint and stop. A second
    signal stops at once (the default handlers are back after the first)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        self.signal = signum
        self.restore()
        print(f"tide distill: {signal.Signals(signum).name} received; saving a checkpoint at the end of this step "
              "(send it again to stop at once)", flush=True)

    def install(self) -> None:
        for sig in SIGNAL_EXIT:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handler, the default behaviour stays
                pass

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ARG002
        if self.signal is not None:
            control.should_log = True  # the resumed run's whole-run train_loss needs this step's loss
            control.should_save = True
            control.should_training_stop = True
        return control

    @property
    def exit_code(self) -> int:
        return SIGNAL_EXIT.get(self.signal, 130)


class RunInterrupted(Exception):
    """Training stopped on a signal after saving ``checkpoint``; ``exit_code`` 130 / 143."""

    def __init__(self, step: int, checkpoint: str, exit_code: int):
        super().__init__(f"interrupted at step {step}")
        self.step, self.checkpoint, self.exit_code = step, checkpoint, exit_code


def train_owned(trainer: Any, config: Any, record: dict[str, Any], curve: list, resume: str | None, *,
                say: Callable[[str], None]) -> None:
    """Train, the output folder owned by this run (an overwrite first removes what the
    run before left); on SIGINT / SIGTERM save a checkpoint and raise :class:`RunInterrupted`."""
    if config.overwrite_output_dir and not resume:
        previous = read_run(config.output_dir)
        removed = clear_previous_run(config.output_dir)
        if removed:
            say(f"--overwrite_output_dir: removed {', '.join(removed)} of {describe(previous)} from {config.output_dir}")
    write_run(config.output_dir, record)
    trainer.add_callback(RunRecordCallback(record, curve))
    interrupt = InterruptCallback()
    trainer.add_callback(interrupt)
    interrupt.install()
    try:
        trainer.train(resume_from_checkpoint=resume)
    finally:
        interrupt.restore()
    step = int(trainer.state.global_step)
    checkpoint = Path(config.output_dir) / f"{transformers.trainer_utils.PREFIX_CHECKPOINT_DIR}-{step}"
    if interrupt.signal is not None and checkpoint.is_dir():  # (a signal after the last step: the run is complete)
        raise RunInterrupted(step, str(checkpoint), interrupt.exit_code)


def resume_command(argv: Sequence[str], checkpoint: str) -> str:
    """``tide distill ...`` as given, with ``--resume_from_checkpoint <checkpoint>``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--resume_from_checkpoint":
            skip = True
            continue
        if arg.startswith("--resume_from_checkpoint="):
            continue
        out.append(arg)
    return shlex.join(["tide", "distill", *out, "--resume_from_checkpoint", checkpoint])
