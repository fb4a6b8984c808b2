"""``block`` teacher adapter (SPEC 2.2): WeDLM or any BD3LM teacher. Input
``y_t ⊕ y0`` or ``y0 ⊕ y_t`` (``concat_order``; WeDLM uses ``x0_xt``), the block
mask of SPEC 2.1 with halves in that order, logits read from the ``y_t`` half
``[b, L_T, V_T]``. Pad keys are blocked as in the student forward."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..bd3lm import CONCAT_ORDERS, ConcatOrder, block_diffusion_logits
from ..hookspecs import PluginSpec, hookimpl
from .base import TeacherAdapter, TeacherConfig


@dataclass
class BlockTeacherConfig(TeacherConfig):
    """:param concat_order: ``xt_x0`` (dllm's layout) or ``x0_xt`` (WeDLM).
    :param block_size: the teacher's block size (teacher ids are padded to a multiple
        with blocked keys)."""

    concat_order: ConcatOrder = "xt_x0"
    block_size: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.concat_order not in CONCAT_ORDERS:
            raise ValueError(f"concat_order {self.concat_order!r} is not one of {CONCAT_ORDERS}")
        if int(self.block_size) <= 0:
            raise ValueError(f"block_size {self.block_size} must be positive")


class BlockTeacher(TeacherAdapter):
    """Frozen block-diffusion teacher."""

    name = "block"
    config_cls = BlockTeacherConfig

    def forward_view(self, noisy_ids: Tensor, clean_ids: Tensor, valid: Tensor) -> Tensor:
        length = noisy_ids.shape[1]
        extra = (-length) % self.config.block_size
        if extra:  # pad to a block multiple with blocked (invalid) keys, cut the logits back
            noisy_ids = torch.nn.functional.pad(noisy_ids, (0, extra))
            clean_ids = torch.nn.functional.pad(clean_ids, (0, extra))
            valid = torch.nn.functional.pad(valid, (0, extra), value=False)
        logits = block_diffusion_logits(
            self.model,
            noisy_ids,
            clean_ids,
            block_size=self.config.block_size,
            attention_mask=valid,
            order=self.config.concat_order,
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
