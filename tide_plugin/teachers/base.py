"""Shared machinery of the teacher adapters (docs/method.md#teacher-adapters, docs/method.md#compdemo).

An adapter wraps a frozen transformers model and turns the noised teacher ids of a
:class:`~tide_plugin.batch.DistillBatch` into merged teacher logits ``[b, L_T, V_T]``.
CompDemo views (``teacher_noisy_ids`` ``[V, b, L_T]``) run as one batched forward
(views concatenated along the batch), or one after the other with
``sequential_views=True`` when memory is short; they are merged position by
position with ``teacher_view_index``.
"""

from __future__ import annotations

import abc
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from ..batch import DistillBatch
from ..bd3lm import unwrap_model
from ..heads import fused_head_problem, logits_as_hidden_states, projected
from ..logits import ProjectedLogits
from ..pipelines import get_pipeline

TeacherDtype = Literal["auto", "float32", "bfloat16", "float16"]
TEACHER_DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TeacherConfig:
    """Options every adapter shares.

    :param mask_token_id: the teacher's mask id ``m_T`` (LLaDA2.0-mini 156895, WeDLM
        151665); read from the model config when ``None``. Checked against the vocabulary.
    :param dtype: cast the teacher to this dtype (``auto`` keeps it as built/loaded).
    :param sequential_views: run CompDemo views one after the other instead of batched.
    :param load_in_4bit: load a checkpoint path in 4-bit (needs bitsandbytes).
    :param attn_implementation: used when the adapter loads a checkpoint path.
    :param trust_remote_code: allow a checkpoint whose architecture ships as code in its
        folder (LLaDA2.0, WeDLM); that code must honour a 4D attention mask.
    """

    mask_token_id: int | None = None
    dtype: TeacherDtype = "auto"
    sequential_views: bool = False
    load_in_4bit: bool = False
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in TEACHER_DTYPES:
            raise ValueError(f"teacher dtype {self.dtype!r} is not one of {TEACHER_DTYPES}")
        if self.mask_token_id is not None and int(self.mask_token_id) < 0:
            raise ValueError(f"teacher mask_token_id {self.mask_token_id} must be >= 0")
        if self.attn_implementation not in ("sdpa", "eager", "flex_attention"):
            raise ValueError(
                f"teacher attn_implementation {self.attn_implementation!r} is not one of sdpa, eager, flex_attention"
            )


def load_teacher_model(path: str, config: TeacherConfig) -> torch.nn.Module:
    """Load a teacher checkpoint from a local directory; nothing is downloaded."""
    from transformers import AutoModelForCausalLM

    if not Path(path).is_dir():
        raise FileNotFoundError(
            f"teacher checkpoint {path!r} is not a local directory: models are loaded from local folders "
            "only (download the checkpoint first and pass its folder)"
        )
    kwargs: dict = {"attn_implementation": config.attn_implementation}
    dtype = _TORCH_DTYPES.get(config.dtype)
    if dtype is not None:
        kwargs["dtype"] = dtype  # transformers >= 4.56 (older: torch_dtype)
    if config.load_in_4bit:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ImportError("load_in_4bit=True needs bitsandbytes: pip install bitsandbytes (CUDA only)")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_compute_dtype=dtype or torch.bfloat16
        )
    return AutoModelForCausalLM.from_pretrained(
        path, trust_remote_code=config.trust_remote_code, local_files_only=True, **kwargs
    )


def model_mask_id(model: torch.nn.Module | str | None) -> int | None:
    """The ``mask_token_id`` a teacher's model config records: a built module's, or a
    checkpoint folder's ``config.json`` (read, not loaded); ``None`` when it records none."""
    if model is None:
        return None
    if isinstance(model, str):
        try:
            fields = json.loads((Path(model) / "config.json").read_text())
        except (OSError, ValueError):
            return None
        value = fields.get("mask_token_id") if isinstance(fields, dict) else None
    else:
        value = getattr(getattr(unwrap_model(model), "config", None), "mask_token_id", None)
    return None if value is None else int(value)


class TeacherAdapter(abc.ABC):
    """Base class: frozen teacher, eval mode, ``no_grad``, view batching and merging.

    Subclasses implement :meth:`forward_view`. Every member of
    :class:`~tide_plugin.hookspecs.TeacherProtocol` is here: ``model`` (the frozen
    model), ``mask_token_id``, ``__call__``, ``to`` and ``projected_logits``.
    """

    name: str = "teacher"
    config_cls: type[TeacherConfig] = TeacherConfig
    model: torch.nn.Module

    def __init__(self, model: torch.nn.Module | str, **config):
        self.config = self.config_cls(**config)
        if isinstance(model, str):
            model = load_teacher_model(model, self.config)
        elif self.config.load_in_4bit:
            if importlib.util.find_spec("bitsandbytes") is None:
                raise ImportError("load_in_4bit=True needs bitsandbytes: pip install bitsandbytes (CUDA only)")
            raise ValueError("load_in_4bit=True needs a checkpoint path for the teacher, not a built model")
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"teacher model must be a torch.nn.Module or a checkpoint path, got {type(model).__name__}")
        dtype = _TORCH_DTYPES.get(self.config.dtype)
        if dtype is not None and not self.config.load_in_4bit:
            model = model.to(dtype)
        model.requires_grad_(False)
        model.eval()
        self.model = model
        self.vocab_size = self._vocab_size()
        mask_id = self.config.mask_token_id
        if mask_id is None:  # what a run's plan resolves too (training.plan.resolve_mask_ids)
            mask_id = model_mask_id(model)
        if mask_id is not None and self.vocab_size is not None and not 0 <= int(mask_id) < self.vocab_size:
            raise ValueError(
                f"teacher mask_token_id {mask_id} is outside the teacher vocabulary [0, {self.vocab_size})"
            )
        self.mask_token_id = None if mask_id is None else int(mask_id)

    def _vocab_size(self) -> int | None:
        emb = unwrap_model(self.model).get_input_embeddings() if hasattr(unwrap_model(self.model), "get_input_embeddings") else None
        return int(emb.num_embeddings) if emb is not None else None

    @property
    def device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the teacher computes in: its first floating-point parameter's."""
        for p in unwrap_model(self.model).parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    def to(self, device: torch.device | str) -> TeacherAdapter:
        """Place the teacher (the trainer puts it on the student's device unless told otherwise)."""
        if not self.config.load_in_4bit:
            self.model.to(device)
        return self

    def train(self, mode: bool = True) -> TeacherAdapter:  # noqa: ARG002 - a teacher stays in eval mode
        self.model.eval()
        return self

    @abc.abstractmethod
    def forward_view(self, noisy_ids: Tensor, clean_ids: Tensor, valid: Tensor) -> Tensor:
        """Logits ``[n, L_T, V_T]`` for noised ids ``[n, L_T]`` (clean ids and validity
        ``[n, L_T]`` alongside)."""

    def views(self, batch: DistillBatch) -> tuple[Tensor, Tensor, Tensor]:
        """``(noisy [V, b, L_T], clean [b, L_T], valid [b, L_T])`` read from the batch.
        In the ``same`` pipeline the teacher reads the student's ids."""
        strategy = get_pipeline(batch.pipeline)
        clean, valid = strategy.teacher_clean(batch)
        noisy = batch.teacher_noisy_ids
        if noisy is None:
            if not strategy.has_teacher_ids and batch.noisy_input_ids is not None:
                noisy = batch.noisy_input_ids[None]
            else:
                raise ValueError("the batch has no teacher_noisy_ids: put the `noise` collator in the chain")
        if noisy.dim() == 2:
            noisy = noisy[None]
        if noisy.shape[1:] != clean.shape:
            raise ValueError(f"teacher_noisy_ids {tuple(noisy.shape)} do not match teacher ids {tuple(clean.shape)}")
        return noisy, clean, valid.bool()

    @torch.no_grad()
    def __call__(self, batch: DistillBatch) -> Tensor:
        """Merged teacher logits ``[b, L_T, V_T]`` (no grad), on the batch's device."""
        noisy, clean, valid = self.views(batch)
        n_views, b, length = noisy.shape
        out_device = noisy.device
        dev = self.device
        noisy, clean, valid = noisy.to(dev), clean.to(dev), valid.to(dev)
        if n_views == 1:
            return self.forward_view(noisy[0], clean, valid).to(out_device)
        if self.config.sequential_views:
            per_view = [self.forward_view(noisy[v], clean, valid) for v in range(n_views)]
            logits = torch.stack(per_view)  # [V, b, L_T, V_T]
        else:
            flat = self.forward_view(
                noisy.reshape(n_views * b, length), clean.repeat(n_views, 1), valid.repeat(n_views, 1)
            )
            logits = flat.view(n_views, b, length, -1)
        return merge_views(logits, batch.teacher_view_index).to(out_device)

    def projected_logits(self, batch: DistillBatch) -> ProjectedLogits | None:
        """The fused output layer's teacher side: merged hidden states ``[b, L_T, H_T]``
        with the output projection (same views and merge as :meth:`__call__`, no
        ``[b, L_T, V_T]`` logits), or ``None`` when the head cannot be fused."""
        if fused_head_problem(self.model) is not None:
            return None
        with logits_as_hidden_states(self.model):
            hidden = self(batch)
        return projected(self.model, hidden)


def merge_views(logits: Tensor, view_index: Tensor | None) -> Tensor:
    """Pick each position's view: ``logits`` ``[V, b, L_T, V_T]``, ``view_index``
    ``[b, L_T]`` long in ``[0, V)`` -> ``[b, L_T, V_T]`` (docs/method.md#compdemo: view 1 at positions in
    ``A``, view 0 elsewhere). Without an index the first view is used."""
    n_views = logits.shape[0]
    if view_index is None or n_views == 1:
        return logits[0]
    idx = view_index.to(logits.device).long()
    if idx.shape != logits.shape[1:3]:
        raise ValueError(f"teacher_view_index {tuple(idx.shape)} does not match logits {tuple(logits.shape[1:3])}")
    if idx.device.type == "cpu" and (int(idx.min()) < 0 or int(idx.max()) >= n_views):  # no device sync
        raise ValueError(f"teacher_view_index must lie in [0, {n_views}), got [{int(idx.min())}, {int(idx.max())}]")
    return torch.gather(logits, 0, idx[None, :, :, None].expand(1, *logits.shape[1:])).squeeze(0)
