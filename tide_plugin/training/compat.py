"""What transformers 4.57 (dllm's line) and 5 do differently with the training arguments."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import transformers

_HAVE_WARMUP_RATIO = "warmup_ratio" in {f.name for f in dataclasses.fields(transformers.TrainingArguments)}


def settle_warmup_ratio(args: Any) -> None:
    """``--warmup_ratio`` on both lines: transformers 5 dropped the field and reads a float
    ``warmup_steps`` below 1 as a ratio; 4.57 keeps it (default 0)."""
    if args.warmup_ratio is not None and not _HAVE_WARMUP_RATIO:
        if not 0.0 <= float(args.warmup_ratio) < 1.0:
            raise ValueError(f"warmup_ratio {args.warmup_ratio} must lie in [0, 1)")
        if float(args.warmup_steps) and float(args.warmup_ratio):
            raise ValueError("give warmup_steps or warmup_ratio, not both")
        if float(args.warmup_ratio):
            args.warmup_steps = float(args.warmup_ratio)
    elif args.warmup_ratio is None and _HAVE_WARMUP_RATIO:
        args.warmup_ratio = 0.0

_MIXED_PRECISION_ENV = "ACCELERATE_MIXED_PRECISION"
_mixed_precision_env: dict = {"launcher": None, "written": None, "seen": False}
"""What the launcher put in ``ACCELERATE_MIXED_PRECISION`` before the first config of this
process, and what the last config's ``TrainingArguments.__post_init__`` wrote there."""


@contextlib.contextmanager
def one_config_mixed_precision() -> Iterator[None]:
    """Around ``TrainingArguments.__post_init__``: transformers 4.57 writes a run's
    ``--bf16``/``--fp16`` into ``os.environ`` and never takes it back, and its Trainer reads
    the precision from there, so a second config in the same process (a notebook, a sweep)
    would train in bf16 though it asks for float32. Before each config, a value left by an
    earlier config is replaced by what the launcher (``accelerate launch --mixed_precision``)
    gave, or removed if it gave none; after it, what the config wrote is remembered."""
    state, current = _mixed_precision_env, os.environ.get(_MIXED_PRECISION_ENV)
    if not state["seen"]:
        state["launcher"], state["seen"] = current, True
    elif current is not None and current == state["written"] and current != state["launcher"]:
        if state["launcher"] is None:
            del os.environ[_MIXED_PRECISION_ENV]
        else:
            os.environ[_MIXED_PRECISION_ENV] = state["launcher"]
    yield
    state["written"] = os.environ.get(_MIXED_PRECISION_ENV)
