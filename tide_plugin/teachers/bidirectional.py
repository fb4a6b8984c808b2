"""``bidirectional`` teacher adapter (docs/method.md#teacher-adapters): LLaDA, LLaDA2 MoE, Dream, any
masked-diffusion LM. Input ``y_t`` ``[b, L_T]``; full bidirectional attention among
non-pad tokens; pad keys are blocked and pad query rows keep their own position,
so no logit anywhere is NaN or inf.

The teacher model is any transformers LM class that honours a custom 4D mask
(a masked-diffusion teacher is architecturally a non-causal LM): e.g.
``Qwen3MoeForCausalLM`` for an MoE teacher.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..bd3lm import attention_implementation, model_dtype, to_additive, with_key_padding
from ..hookspecs import PluginSpec, hookimpl
from .base import TeacherAdapter, TeacherConfig


@dataclass
class BidirectionalTeacherConfig(TeacherConfig):
    """See :class:`~tide_plugin.teachers.base.TeacherConfig`."""


def bidirectional_mask(valid: Tensor, *, impl: str, dtype: torch.dtype) -> Tensor:
    """``[b, 1, L, L]`` mask from key validity ``[b, L]``: boolean for SDPA, additive
    float for eager."""
    length = valid.shape[1]
    full = torch.ones(length, length, dtype=torch.bool, device=valid.device)
    mask = with_key_padding(full, valid)
    return to_additive(mask, dtype) if impl == "eager" else mask


class BidirectionalTeacher(TeacherAdapter):
    """Frozen bidirectional masked-diffusion teacher: ``y_t`` -> logits ``[b, L_T, V_T]``."""

    name = "bidirectional"
    config_cls = BidirectionalTeacherConfig

    def forward_view(self, noisy_ids: Tensor, clean_ids: Tensor, valid: Tensor) -> Tensor:  # noqa: ARG002
        impl = attention_implementation(self.model)
        if impl == "flex_attention":
            raise ValueError("the bidirectional teacher supports sdpa and eager attention; flex brings nothing here")
        n, length = noisy_ids.shape
        mask = bidirectional_mask(valid, impl=impl, dtype=model_dtype(self.model))
        position_ids = torch.arange(length, device=noisy_ids.device).unsqueeze(0).expand(n, -1)
        out = self.model(input_ids=noisy_ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
        return out.logits if hasattr(out, "logits") else out[0]


@hookimpl
def tide_plugin_teachers():
    return [
        PluginSpec(
            name="bidirectional",
            factory=BidirectionalTeacher,
            summary="masked-diffusion teacher (LLaDA, LLaDA2 MoE, Dream): full attention on y_t, pads blocked",
            aliases=("llada", "masked_diffusion"),
            config_cls=BidirectionalTeacherConfig,
        )
    ]
