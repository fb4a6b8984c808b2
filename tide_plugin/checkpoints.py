"""Student checkpoints in and out: one loader for every place that reads a student
folder (``tide distill``, ``tide eval``, the study) and one saver.

Today: plain transformers causal-LM folders (``model_type`` ``qwen3``, ...). The
A2D layouts of dllm (``a2d-qwen3``, ``a2d-qwen2``, ``a2d-llama``, SPEC 2.2) are the
recipe issue's work and land here, behind the same two functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TIDE_CONFIG_NAME = "tide_config.json"
"""Written next to every saved student: what sampling and evaluation need (mask id, block size)."""

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_student(
    path: str | Path,
    *,
    attn_implementation: str | None = "sdpa",
    dtype: str | torch.dtype | None = None,
) -> torch.nn.Module:
    """Load a student from a local folder (nothing is downloaded).

    :param path: a ``save_pretrained`` folder.
    :param attn_implementation: ``sdpa`` | ``eager`` | ``flex_attention`` (the student
        forward always passes its explicit mask).
    :param dtype: ``None``/``"auto"`` keeps the saved dtype, else ``float32`` | ``bfloat16`` | ``float16``.
    :return: the model with an LM head, in eval mode off (as ``from_pretrained`` returns it).
    """
    from transformers import AutoModelForCausalLM

    folder = Path(str(path)).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"student checkpoint {str(path)!r} is not a local directory: models are loaded from local folders "
            "only (download the checkpoint first and pass its folder)"
        )
    kwargs: dict[str, Any] = {"local_files_only": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if dtype not in (None, "auto"):
        if isinstance(dtype, str) and dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {('auto', *_DTYPES)}")
        kwargs["dtype"] = _DTYPES[dtype] if isinstance(dtype, str) else dtype
    try:
        return AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except TypeError:  # transformers 4.x spells it torch_dtype
        if "dtype" in kwargs:
            kwargs["torch_dtype"] = kwargs.pop("dtype")
        return AutoModelForCausalLM.from_pretrained(folder, **kwargs)
