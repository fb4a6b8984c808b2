"""Output layers of student and teacher models for the fused path (docs/architecture.md#the-fused-output-layer).

The fused output layer (:mod:`tide_plugin.logits`) needs the hidden states
a model feeds its output projection, and that projection's weight and bias. This
module gets both from any transformers causal-LM class without a second code path
for the forward pass: :func:`logits_as_hidden_states` makes the model's output layer
the identity for one call, so the model (wrapped in DDP or not) runs exactly as usual,
``logits_to_keep`` included, and what comes back as "logits" are the hidden states.

A head can be fused when it is a plain ``torch.nn.Linear`` and the model applies no
transform after it (:data:`LOGIT_TRANSFORMS`); otherwise :func:`fused_head_problem`
says why and the trainer keeps full logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from .bd3lm import block_diffusion_logits, unwrap_model
from .logits import ProjectedLogits

LOGIT_TRANSFORMS: tuple[str, ...] = (
    "final_logit_softcapping",
    "logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "lm_head_multiplier",
    "dim_model_base",
)
"""Config fields of architectures that transform the logits after (or the hidden
states before) the output projection; a set one rules the fused path out."""


def _head(model: torch.nn.Module) -> torch.nn.Module | None:
    inner = unwrap_model(model)
    get = getattr(inner, "get_output_embeddings", None)
    return get() if callable(get) else None


def fused_head_problem(model: torch.nn.Module) -> str | None:
    """``None`` when the model's logits are ``Linear(hidden)``; else one line saying why not."""
    head = _head(model)
    name = type(unwrap_model(model)).__name__
    if head is None:
        return f"{name} has no output embeddings (get_output_embeddings)"
    if type(head) is not torch.nn.Linear:
        return f"{name}'s output layer is a {type(head).__name__}, not a plain Linear"
    config = getattr(unwrap_model(model), "config", None)
    for field in LOGIT_TRANSFORMS:
        value = getattr(config, field, None)
        if value not in (None, False, 0, 1, 0.0, 1.0):
            return f"{name} transforms its logits ({field}={value!r})"
    return None


def output_projection(model: torch.nn.Module) -> tuple[Tensor, Tensor | None]:
    """``(weight [V, H], bias [V] or None)`` of the model's output layer (the embedding
    matrix itself when the embeddings are tied: gradients reach it through both uses)."""
    problem = fused_head_problem(model)
    if problem is not None:
        raise ValueError(f"the fused output layer cannot be used: {problem}")
    head = _head(model)
    return head.weight, head.bias


def _identity(x: Tensor) -> Tensor:
    return x


@contextlib.contextmanager
def logits_as_hidden_states(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, the model's output layer returns its input unchanged."""
    head = _head(model)
    if head is None:
        raise ValueError(f"{type(unwrap_model(model)).__name__} has no output embeddings (get_output_embeddings)")
    own = head.__dict__.get("forward")  # an instance-level forward (e.g. an offloading hook)
    head.forward = _identity
    try:
        yield
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own


def projected(model: torch.nn.Module, hidden: Tensor) -> ProjectedLogits:
    """Wrap hidden states ``[b, L, H]`` read under :func:`logits_as_hidden_states` with the
    model's output projection."""
    weight, bias = output_projection(model)
    if hidden.dim() != 3 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{type(unwrap_model(model)).__name__} returned {list(hidden.shape)} with its output layer bypassed, "
            f"expected hidden states [b, L, {weight.shape[1]}]"
        )
    if weight.device != hidden.device:  # a teacher placed elsewhere: its rows are read where the student is
        weight = weight.to(hidden.device)
        bias = None if bias is None else bias.to(hidden.device)
    return ProjectedLogits(hidden, weight, bias)


def block_diffusion_projected(
    model: torch.nn.Module,
    noisy_ids: Tensor,
    clean_ids: Tensor,
    *,
    block_size: int,
    attention_mask: Tensor | None = None,
) -> ProjectedLogits:
    """:func:`~tide_plugin.bd3lm.block_diffusion_logits` without the projection: the
    ``x_t`` half's hidden states ``[b, L, H]`` with the output layer, as projected logits."""
    with logits_as_hidden_states(model):
        hidden = block_diffusion_logits(
            model, noisy_ids, clean_ids, block_size=block_size, attention_mask=attention_mask
        )
    return projected(model, hidden)


def fused_path_problem(student: torch.nn.Module, teacher: object, objective: object) -> str | None:
    """``None`` when a training step can run on the fused output layer; else one line
    naming what rules it out (the step then builds full logits, as before)."""
    if not getattr(objective, "supports_projected_logits", False):
        comps = getattr(objective, "components", [objective])
        names = [getattr(c, "name", type(c).__name__) for c in comps if not getattr(c, "supports_projected_logits", False)]
        return f"objective(s) {names} do not declare supports_projected_logits (they read full logits)"
    problem = fused_head_problem(student)
    if problem is not None:
        return f"student: {problem}"
    if teacher is None:  # a CE-only run: no teacher to project
        return None
    if not callable(getattr(teacher, "projected_logits", None)):
        return f"teacher adapter {type(teacher).__name__} has no projected_logits(batch)"
    teacher_model = getattr(teacher, "model", None)
    if isinstance(teacher_model, torch.nn.Module):
        problem = fused_head_problem(teacher_model)
        if problem is not None:
            return f"teacher: {problem}"
    return None
