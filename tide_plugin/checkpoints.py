"""Student checkpoints in and out: one loader for every place that reads a student
folder (``tide distill``, ``tide eval``, the study) and one saver.

Two layouts (docs/method.md#teacher-adapters):

- **plain**: a transformers causal-LM folder (``model_type`` ``qwen3``, ``llama``, ...),
  loaded with ``AutoModelForCausalLM``.
- **A2D**: dllm's "autoregressive to diffusion" folders (``model_type`` ``a2d-qwen3``,
  ``a2d-qwen2``, ``a2d-llama``; ``architectures`` ``["A2DQwen3LMHeadModel"]``, ...). Their
  LM-head classes subclass the transformers causal LM with the same weight names and
  are registered by dllm for ``AutoModel`` / ``AutoModelForMaskedLM``. When that
  registration is present (dllm imported, or any package that registers the type) the
  folder loads through it; otherwise through the equivalent transformers class with
  the same weights. Both give the same logits here, because the student forward
  always passes its explicit 4D block mask (an A2D model only differs in how it treats
  a 2D mask).

A student keeps the layout it came in: :func:`load_student` records it on the model and
:func:`save_student` (and the trainer's save, through :func:`apply_layout`) writes it
back, so an A2D student is saved as A2D (loadable by dllm with its LM head) and a plain
one stays plain.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from . import jsonio

TIDE_CONFIG_NAME = "tide_config.json"
"""Written next to every saved student: what sampling and evaluation need (mask id, block size)."""

A2D_TYPES: dict[str, tuple[str, str]] = {
    # dllm model_type -> (transformers model_type with the same weights, dllm's LM-head class name)
    "a2d-qwen3": ("qwen3", "A2DQwen3LMHeadModel"),
    "a2d-qwen2": ("qwen2", "A2DQwen2LMHeadModel"),
    "a2d-llama": ("llama", "A2DLlamaLMHeadModel"),
}
PLAIN = "plain"
LAYOUT_ATTR = "tide_checkpoint_layout"
"""Attribute set on a loaded student: ``"plain"`` or its A2D ``model_type``."""

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_model_folder(path: str | Path, what: str = "student") -> Path:
    """The folder, if it is a local model folder (holds ``config.json``); else one line
    naming the path and what is missing, before any tokenizer or weight is read."""
    folder = Path(str(path)).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{what} checkpoint {str(path)!r} is not a local directory: models are loaded from local folders "
            "only (download the checkpoint first and pass its folder)"
        )
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"not a model folder: {path} (no config.json; the {what} folder must hold the model)")
    return folder


def _folder(path: str | Path) -> Path:
    return check_model_folder(path, "student")


def checkpoint_layout(path: str | Path) -> str:
    """``"plain"`` or the A2D ``model_type`` of the folder's ``config.json``."""
    model_type = jsonio.read(_folder(path) / "config.json").get("model_type")
    return model_type if model_type in A2D_TYPES else PLAIN


def _register_dllm_a2d() -> None:
    """Import dllm's A2D models when dllm is installed (importing registers them)."""
    try:
        import dllm.pipelines.a2d  # noqa: F401
    except Exception:  # dllm missing, or broken under this transformers version
        pass


def _registered(model_type: str) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return model_type in CONFIG_MAPPING


def _from_pretrained(cls: Any, folder: Path, kwargs: dict[str, Any]) -> torch.nn.Module:
    try:
        return cls.from_pretrained(folder, **kwargs)
    except TypeError:  # transformers 4.x spells it torch_dtype
        if "dtype" not in kwargs:
            raise
        kwargs = dict(kwargs)
        kwargs["torch_dtype"] = kwargs.pop("dtype")
        return cls.from_pretrained(folder, **kwargs)


def _load_a2d(folder: Path, model_type: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    _register_dllm_a2d()
    if _registered(model_type):  # dllm's classes (or whoever registered the type)
        from transformers import AutoModelForMaskedLM

        model = _from_pretrained(AutoModelForMaskedLM, folder, kwargs)
        if model.get_output_embeddings() is None:
            raise ValueError(
                f"{model_type!r} is registered with a class without an LM head ({type(model).__name__}); "
                "a student needs its output layer"
            )
        return model
    # Without dllm: the transformers causal LM with the same weight names.
    from transformers import AutoConfig, AutoModelForCausalLM

    base_type = A2D_TYPES[model_type][0]
    fields = jsonio.read(folder / "config.json")
    fields.pop("model_type", None)
    fields.pop("architectures", None)
    fields.pop("auto_map", None)
    config = AutoConfig.for_model(base_type, **fields)
    return _from_pretrained(AutoModelForCausalLM, folder, {**kwargs, "config": config})


def training_dtype(dtype: str | torch.dtype | None) -> str | torch.dtype:
    """The dtype a student is trained in for the ``--dtype`` option: float32 unless the
    user chose one (``auto``: the saved dtype). A student saved in bfloat16 and trained
    in bfloat16 loses every AdamW update below half a bfloat16 step of its weight (about
    30% of them at lr 1e-4); mixed precision (``--bf16``) keeps float32 weights too."""
    return "float32" if dtype is None else dtype


def load_student(
    path: str | Path,
    *,
    attn_implementation: str | None = "sdpa",
    dtype: str | torch.dtype | None = None,
) -> torch.nn.Module:
    """Load a student from a local folder, plain or A2D (nothing is downloaded).

    :param path: a ``save_pretrained`` folder.
    :param attn_implementation: ``sdpa`` | ``eager`` | ``flex_attention`` (the student
        forward always passes its explicit mask).
    :param dtype: ``None``/``"auto"`` keeps the saved dtype, else ``float32`` | ``bfloat16`` | ``float16``
        (a student to train: :func:`training_dtype`).
    :return: the model with an LM head (as ``from_pretrained`` returns it), its layout in
        ``model.tide_checkpoint_layout``.
    """
    folder = _folder(path)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if dtype not in (None, "auto"):
        if isinstance(dtype, str) and dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {('auto', *_DTYPES)}")
        kwargs["dtype"] = _DTYPES[dtype] if isinstance(dtype, str) else dtype
    layout = checkpoint_layout(folder)
    if layout == PLAIN:
        from transformers import AutoModelForCausalLM

        model = _from_pretrained(AutoModelForCausalLM, folder, kwargs)
    else:
        model = _load_a2d(folder, layout, kwargs)
    setattr(model, LAYOUT_ATTR, layout)
    return model


def layout_of(model: torch.nn.Module) -> str:
    """The layout a student was loaded in (``"plain"`` for a model built in memory)."""
    layout = getattr(model, LAYOUT_ATTR, None)
    if layout is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        layout = model_type if model_type in A2D_TYPES else PLAIN
    return layout


def apply_layout(folder: str | Path, layout: str) -> None:
    """Rewrite a saved folder's ``config.json`` in ``layout``: for A2D, ``model_type`` and
    ``architectures`` as dllm writes them (the weights' names are already the same);
    ``"plain"`` leaves the folder as ``save_pretrained`` wrote it."""
    if layout == PLAIN:
        return
    if layout not in A2D_TYPES:
        raise ValueError(f"checkpoint layout {layout!r} is not one of {(PLAIN, *A2D_TYPES)}")
    path = Path(folder) / "config.json"
    config = jsonio.read(path)
    config["model_type"] = layout
    config["architectures"] = [A2D_TYPES[layout][1]]
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_student(model: torch.nn.Module, folder: str | Path, tokenizer: Any = None) -> None:
    """``save_pretrained`` in the layout the student came in, with its tokenizer."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    apply_layout(out, layout_of(model))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
