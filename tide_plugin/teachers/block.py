"""``block`` teacher adapter (docs/method.md#teacher-adapters): WeDLM or any BD3LM teacher. Input
``y_t ⊕ y0`` or ``y0 ⊕ y_t`` (``concat_order``; WeDLM uses ``x0_xt``), the block
mask of docs/method.md#student-forward with halves in that order, logits read from the ``y_t`` half
``[b, L_T, V_T]``.

Block padding (docs/method.md#noising, as the reference does for WeDLM): each teacher sequence is
padded with the teacher's EOS up to a multiple of ``block_size`` and the teacher sees
those EOS tokens as real tokens, so its logits in the last block depend on them
(``block_padding="eos"``). Batch padding beyond that stays blocked. The mask goes to
the model in the form its forward takes (``mask_form``): a dict
``{"full_attention": mask}`` for a model that checks for one (WeDLM), else a 4D tensor.
"""

from __future__ import annotations

import inspect
import re
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..bd3lm import CONCAT_ORDERS, ConcatOrder, block_diffusion_logits, unwrap_model
from ..hookspecs import PluginSpec, hookimpl
from .base import TeacherAdapter, TeacherConfig

BLOCK_PADDINGS: tuple[str, ...] = ("eos", "blocked")
MASK_FORMS: tuple[str, ...] = ("auto", "dict", "tensor")
_DICT_CHECK = re.compile(r"isinstance\(\s*(?:\w+\s*:=\s*)?attention_mask\s*,\s*dict\s*\)")


@dataclass
class BlockTeacherConfig(TeacherConfig):
    """:param concat_order: ``xt_x0`` (dllm's layout) or ``x0_xt`` (WeDLM).
    :param block_size: the teacher's block size.
    :param block_padding: ``eos`` (the reference): pad each sequence to a block
        multiple with visible EOS tokens; ``blocked`` (ours, earlier): pad with blocked keys.
    :param eos_token_id: the teacher's EOS id for ``eos`` padding (the teacher tokenizer's
        ``eos_token_id``); read from the model's config when ``None``. When neither
        gives one, the adapter warns once and pads with blocked keys.
    :param mask_form: ``auto`` (a dict when the model's forward checks for one, else a
        tensor), ``dict`` or ``tensor``."""

    concat_order: ConcatOrder = "xt_x0"
    block_size: int = 32
    block_padding: Literal["eos", "blocked"] = "eos"
    eos_token_id: int | None = None
    mask_form: Literal["auto", "dict", "tensor"] = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.concat_order not in CONCAT_ORDERS:
            raise ValueError(f"concat_order {self.concat_order!r} is not one of {CONCAT_ORDERS}")
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size <= 0:
            raise ValueError(f"block_size must be a positive int, got {self.block_size!r}")
        if self.block_padding not in BLOCK_PADDINGS:
            raise ValueError(f"block_padding {self.block_padding!r} is not one of {BLOCK_PADDINGS}")
        if self.mask_form not in MASK_FORMS:
            raise ValueError(f"mask_form {self.mask_form!r} is not one of {MASK_FORMS}")
        e = self.eos_token_id
        if e is not None and (isinstance(e, bool) or not isinstance(e, int) or e < 0):
            raise ValueError(f"eos_token_id must be a non-negative int or None, got {e!r}")


def takes_mask_dict(model: torch.nn.Module) -> bool:
    """Whether the model's forward (or its inner model's) checks for a dict mask, the
    transformers form that skips mask creation."""
    base = unwrap_model(model)
    for module in (base, getattr(base, "model", None), getattr(base, "base_model", None)):
        if module is None:
            continue
        try:
            source = inspect.getsource(type(module).forward)
        except (OSError, TypeError):
            continue
        if _DICT_CHECK.search(source):
            return True
    return False


def _config_eos(model: torch.nn.Module) -> int | None:
    base = unwrap_model(model)
    for cfg in (getattr(base, "config", None), getattr(base, "generation_config", None)):
        eos = getattr(cfg, "eos_token_id", None)
        if isinstance(eos, (list, tuple)):
            eos = eos[0] if eos else None
        if eos is not None:
            return int(eos)
    return None


def pad_to_block(noisy_ids: Tensor, clean_ids: Tensor, valid: Tensor, block_size: int,
                 eos_id: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """Pad ``[n, L]`` teacher rows to a block multiple. With ``eos_id``: each row's real
    tokens are followed by EOS up to its own block multiple, valid (docs/method.md#noising); without:
    the padding is blocked. Batch padding past that stays invalid."""
    length = noisy_ids.shape[1]
    extra = (-length) % block_size
    if extra:
        noisy_ids = torch.nn.functional.pad(noisy_ids, (0, extra))
        clean_ids = torch.nn.functional.pad(clean_ids, (0, extra))
        valid = torch.nn.functional.pad(valid, (0, extra), value=False)
    if eos_id is None:
        return noisy_ids, clean_ids, valid
    pos = torch.arange(valid.shape[1], device=valid.device)
    real = torch.where(valid, pos + 1, 0).amax(dim=1, keepdim=True)  # [n, 1] end of the real tokens
    fill = (pos >= real) & (pos < (real + block_size - 1) // block_size * block_size)
    eos = torch.full_like(noisy_ids, eos_id)
    return torch.where(fill, eos, noisy_ids), torch.where(fill, eos, clean_ids), valid | fill


class BlockTeacher(TeacherAdapter):
    """Frozen block-diffusion teacher."""

    name = "block"
    config_cls = BlockTeacherConfig

    def __init__(self, model: torch.nn.Module | str, **config):
        super().__init__(model, **config)
        cfg = self.config
        self.eos_token_id = None
        self.block_padding = cfg.block_padding
        # the padding in effect: "blocked" when "eos" was asked for but no EOS id is known
        if cfg.block_padding == "eos":
            eos = cfg.eos_token_id if cfg.eos_token_id is not None else _config_eos(self.model)
            if eos is None:
                warnings.warn(
                    "block teacher: no EOS id is known (pass eos_token_id=<the teacher tokenizer's eos_token_id> or "
                    "set it in the model config); teacher rows are padded to a block multiple with blocked keys, "
                    "not with the visible EOS tokens of the reference (docs/method.md#noising)",
                    UserWarning,
                    stacklevel=2,
                )
                self.block_padding = "blocked"
            elif self.vocab_size is not None and not 0 <= int(eos) < self.vocab_size:
                raise ValueError(f"teacher eos_token_id {eos} is outside the teacher vocabulary [0, {self.vocab_size})")
            else:
                self.eos_token_id = int(eos)
        self.mask_as_dict = cfg.mask_form == "dict" or (cfg.mask_form == "auto" and takes_mask_dict(self.model))

    def forward_view(self, noisy_ids: Tensor, clean_ids: Tensor, valid: Tensor) -> Tensor:
        length = noisy_ids.shape[1]
        noisy_ids, clean_ids, valid = pad_to_block(noisy_ids, clean_ids, valid, self.config.block_size,
                                                   self.eos_token_id)
        logits = block_diffusion_logits(
            self.model,
            noisy_ids,
            clean_ids,
            block_size=self.config.block_size,
            attention_mask=valid,
            order=self.config.concat_order,
            mask_as_dict=self.mask_as_dict,
        )
        return logits[:, :length]


@hookimpl
def tide_plugin_teachers():
    return [
        PluginSpec(
            name="block",
            factory=BlockTeacher,
            summary="block-diffusion teacher (WeDLM, BD3LM): y_t ⊕ y0 or y0 ⊕ y_t, logits from the y_t half",
            aliases=("bd3lm", "wedlm"),
            alias_config={"wedlm": {"concat_order": "x0_xt"}},
            config_cls=BlockTeacherConfig,
        )
    ]
