"""What ``tide eval`` needs around the model: the checkpoint-folder check, the
process group (one process or ``accelerate launch``), the empty think block of
the paper's protocol, and hub access (off unless ``--online``)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

THINK_BLOCK = "<think>\n\n</think>\n\n"
_THINK_RE = re.compile(r"<think>.*?</think>\s*", re.DOTALL)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def check_checkpoint_dir(path: str | Path) -> Path:
    """The folder, if it holds a model (``config.json``) and a tokenizer; else one
    clear error saying what is missing (nothing is downloaded)."""
    folder = Path(str(path)).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"--model {str(path)!r} is not a local checkpoint directory (model + tokenizer saved with "
            "save_pretrained, e.g. the output of `tide distill`); nothing is downloaded"
        )
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"--model {str(path)!r} is not a checkpoint: it has no config.json (a student folder holds "
            "config.json, the weights and the tokenizer files)"
        )
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"--model {str(path)!r} has a config.json but no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); "
            "save the tokenizer next to the model"
        )
    return folder


def strip_think(text: str) -> str:
    """An answer without its think blocks (closed ones, and an unclosed one the
    generation ran into, which is cut from ``<think>`` on)."""
    text = _THINK_RE.sub("", text)
    if "</think>" in text:  # the opening tag was in the prompt
        text = text.split("</think>", 1)[1].lstrip()
    start = text.find("<think>")
    return text if start == -1 else text[:start]


def distributed_rank() -> tuple[int, int]:
    """``(rank, world_size)``: from the process group ``accelerate launch``
    starts (initialised here when its environment is set), else ``(0, 1)``."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        import torch

        # accelerate launch / torchrun set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def default_device(rank: int, world_size: int) -> str:
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    local = int(os.environ.get("LOCAL_RANK", rank if world_size > 1 else 0))
    return f"cuda:{local % torch.cuda.device_count()}"


def all_gather(tensor: Any) -> Any:
    import torch
    import torch.distributed as dist

    parts = [torch.zeros_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor)
    return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)


def gather_object(obj: Any, dst: int = 0) -> list[Any] | None:
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)  # gloo and nccl both; gather_object needs a device on nccl
    return out if dist.get_rank() == dst else None


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


# -- hub access --------------------------------------------------------------------
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
# the copies the libraries take of the environment when they are imported
_OFFLINE_FLAGS = (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
                  ("datasets.config", "HF_DATASETS_OFFLINE"))


def offline_by_environment() -> bool:
    """The user's environment already asks for no hub access."""
    return any(os.environ.get(k, "").strip().upper() in ("1", "ON", "YES", "TRUE") for k in OFFLINE_ENV)


@contextlib.contextmanager
def hub_access(online: bool) -> Iterator[None]:
    """Unless ``online``: no hub access for the run (``HF_HUB_OFFLINE=1``,
    ``HF_DATASETS_OFFLINE=1``, and the flags of the libraries already imported),
    so a dataset that is not local fails at once instead of after the hub client's
    retries (~23 s per dataset without a network). Restored on exit."""
    if online:
        yield
        return
    saved_env = {k: os.environ.get(k) for k in OFFLINE_ENV}
    saved_flags: list[tuple[Any, str, Any]] = []
    os.environ.update({k: "1" for k in OFFLINE_ENV})
    for module_name, attr in _OFFLINE_FLAGS:
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, attr):
            saved_flags.append((module, attr, getattr(module, attr)))
            setattr(module, attr, True)
    try:
        yield
    finally:
        for module, attr, value in reversed(saved_flags):
            setattr(module, attr, value)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- lm-eval's log ------------------------------------------------------------------
NOTES_LOGGER = "tide_plugin.eval.lm_eval"
# lm-eval warnings about choices this package makes on purpose (the suite's protocol,
# the task files' defaults): notes, logged at DEBUG
LM_EVAL_NOTES = (
    "Custom kwargs can be passed to `--metadata`",
    "specified through cli, these settings will update set parameters",
    "Overwriting default num_fewshot",
    "is defined, but aggregation is not",
    "is defined, but higher_is_better is not",
    "No aggregation function defined for metric",
    "appears to be an instruct or chat variant",
    "model_args not specified",
)


class _LmEvalToOurs(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        note = record.levelno < logging.WARNING or any(n in message for n in LM_EVAL_NOTES)
        logging.getLogger(NOTES_LOGGER).log(logging.DEBUG if note else record.levelno, "lm-eval: %s", message)


@contextlib.contextmanager
def lm_eval_notes() -> Iterator[None]:
    """lm-eval's log goes to our logger ``tide_plugin.eval.lm_eval``: its notes
    (:data:`LM_EVAL_NOTES`, and everything below WARNING) at DEBUG, its real
    warnings at their level. Restored on exit."""
    lm_logger = logging.getLogger("lm_eval")
    handler = _LmEvalToOurs()
    saved = lm_logger.propagate
    lm_logger.addHandler(handler)
    lm_logger.propagate = False
    try:
        yield
    finally:
        lm_logger.removeHandler(handler)
        lm_logger.propagate = saved
