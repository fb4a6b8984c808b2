"""Held-out bits per UTF-8 byte from a model's own masked-diffusion NELBO.

For one conversation, the targets are the tokens that overlap the assistant's content
(its end-of-turn token included, when the template writes one inside the span; the prompt
is never noised). With the linear schedule ``alpha(t) = 1 - t`` the NELBO of the targets
given the prompt is (docs/method.md#student-forward, MDLM / BD3LM)::

    NELBO = E_{t ~ U(0,1)} [ 1/t * sum_{i masked at t} -log p(x0_i | x_t) ]

A BD3LM model (``bd3lm``, ``x_t ⊕ x0``; or a block teacher, ``x0 ⊕ x_t``) gets one ``t`` per
sequence for all its blocks, which is unbiased for the sum of the per-block NELBOs (a block
sees the clean blocks before it); a bidirectional masked-diffusion model (``mdlm``) sees
the whole noised response. Monte Carlo: ``K`` stratified times per sequence
(``t_k = eps + (1 - eps) (k + u_k) / K``) and Bernoulli(t) masks, all from generators
seeded by ``(seed, sequence index)``, so every model with the same tokenizer sees the same
noise. Bits per byte = ``sum NELBO / ln 2 / sum bytes`` over the held-out set, where bytes
are the UTF-8 bytes of the assistant contents: the number does not depend on the tokenizer,
so teachers and students compare. The standard error is the ratio estimator's over sequences.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

KINDS = ("bd3lm", "block", "mdlm")


@dataclass
class Encoded:
    """One conversation on one tokenizer: ids, target flags, content bytes."""

    ids: list[int]
    targets: list[bool]
    nbytes: int


def encode_targets(tokenizer: Any, messages: Sequence[Mapping[str, Any]], role: str = "assistant") -> Encoded:
    """Render ``messages`` with the tokenizer's template; targets: tokens overlapping the
    content of every ``role`` message."""
    from ..alignment import encode_side

    enc = encode_side(tokenizer, messages, side="study")
    if enc.content_chars is None:
        raise ValueError("the chat template changes message contents; cannot locate the assistant content")
    spans = [span for span, m in zip(enc.content_chars, messages) if m["role"] == role]
    targets = [any(s < e_span and e > s_span for s_span, e_span in spans) for s, e in enc.offsets]
    # the end-of-turn marker right after the content belongs to the answer (it ends it)
    for k in range(len(enc.ids) - 1):
        if targets[k] and not targets[k + 1] and enc.ids[k + 1] == getattr(tokenizer, "eos_token_id", None):
            targets[k + 1] = True
    nbytes = sum(len(m["content"].encode("utf-8")) for m in messages if m["role"] == role)
    return Encoded(ids=list(enc.ids), targets=targets, nbytes=nbytes)


@dataclass
class BpbResult:
    bpb: float
    se: float
    nats: list[float]
    nbytes: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {"bpb": self.bpb, "se": self.se, "sequences": len(self.nats), "bytes": sum(self.nbytes)}


def ratio_bpb(nats: Sequence[float], nbytes: Sequence[int]) -> tuple[float, float]:
    """``(sum nats / ln 2 / sum bytes, its standard error over sequences)``."""
    n = len(nats)
    total_b = float(sum(nbytes))
    r = sum(nats) / total_b
    if n < 2:
        return r / math.log(2), float("nan")
    resid = [a - r * b for a, b in zip(nats, nbytes)]
    var = sum(e * e for e in resid) / (n * (n - 1))
    return r / math.log(2), math.sqrt(var) * n / total_b / math.log(2)


def _noise(index: int, targets: Tensor, samples: int, seed: int, eps: float) -> tuple[Tensor, Tensor]:
    """``(t [K], masked [K, n])`` for sequence ``index`` (independent of batching)."""
    gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(index)) % (2**63))
    u = torch.rand(samples, generator=gen, dtype=torch.float64)
    t = eps + (1 - eps) * (torch.arange(samples, dtype=torch.float64) + u) / samples
    draws = torch.rand(samples, targets.numel(), generator=gen, dtype=torch.float64)
    return t, (draws < t[:, None]) & targets[None]


def model_logits(model: torch.nn.Module, kind: str, noisy: Tensor, clean: Tensor, valid: Tensor, block_size: int) -> Tensor:
    """Logits ``[b, L, V]`` of ``kind`` on noised ids (pads: ``valid`` False)."""
    from ..bd3lm import attention_implementation, block_diffusion_logits
    from ..teachers.bidirectional import bidirectional_mask

    if kind in ("bd3lm", "block"):
        order = "xt_x0" if kind == "bd3lm" else "x0_xt"
        return block_diffusion_logits(model, noisy, clean, block_size=block_size, attention_mask=valid, order=order)
    if kind != "mdlm":
        raise ValueError(f"model kind {kind!r} is not one of {KINDS}")
    mask = bidirectional_mask(valid, impl=attention_implementation(model), dtype=torch.float32)
    pos = torch.arange(noisy.shape[1], device=noisy.device).unsqueeze(0).expand(noisy.shape[0], -1)
    out = model(input_ids=noisy, attention_mask=mask, position_ids=pos, use_cache=False)
    return out.logits


@torch.no_grad()
def heldout_bpb(
    model: torch.nn.Module,
    kind: str,
    data: Sequence[Encoded],
    *,
    mask_id: int,
    pad_id: int,
    block_size: int = 32,
    samples: int = 4,
    seed: int = 1234,
    eps: float = 1e-3,
    max_tokens: int = 8192,
) -> BpbResult:
    """NELBO bits per byte of ``data`` under ``model`` (see the module docstring).

    :param kind: ``bd3lm`` (student, ``x_t ⊕ x0``), ``block`` (``x0 ⊕ x_t``) or ``mdlm``.
    :param samples: ``K``, Monte Carlo times per sequence (stratified).
    :param max_tokens: rows per forward are chosen so that rows x length stays below this.
    """
    if kind not in KINDS:
        raise ValueError(f"model kind {kind!r} is not one of {KINDS}")
    if samples < 1:
        raise ValueError(f"samples {samples} must be >= 1")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows: list[tuple[int, float, Tensor, Tensor]] = []  # (sequence, t, ids, masked)
    for i, enc in enumerate(data):
        ids = torch.tensor(enc.ids, dtype=torch.long)
        t, masked = _noise(i, torch.tensor(enc.targets, dtype=torch.bool), samples, seed, eps)
        rows += [(i, float(t[k]), ids, masked[k]) for k in range(samples)]
    rows.sort(key=lambda r: r[2].numel())
    nats = [0.0] * len(data)
    start = 0
    while start < len(rows):
        end = start + 1  # rows are sorted by length: the last one of a chunk is its longest
        while end < len(rows) and (end - start + 1) * rows[end][2].numel() <= max_tokens:
            end += 1
        chunk, start = rows[start:end], end
        longest = max(r[2].numel() for r in chunk)
        if kind != "mdlm":
            longest = -(-longest // block_size) * block_size
        clean = torch.full((len(chunk), longest), pad_id, dtype=torch.long)
        masked = torch.zeros(len(chunk), longest, dtype=torch.bool)
        valid = torch.zeros(len(chunk), longest, dtype=torch.bool)
        for j, (_, _, ids, m) in enumerate(chunk):
            clean[j, : ids.numel()], masked[j, : ids.numel()], valid[j, : ids.numel()] = ids, m, True
        clean, masked, valid = clean.to(device), masked.to(device), valid.to(device)
        noisy = torch.where(masked, torch.full_like(clean, mask_id), clean)
        logits = model_logits(model, kind, noisy, clean, valid, block_size)
        nll = torch.nn.functional.cross_entropy(logits[masked].float(), clean[masked], reduction="none")
        per_row = torch.zeros(len(chunk), dtype=torch.float64, device=device)
        per_row.index_add_(0, masked.nonzero()[:, 0], nll.double())
        for j, (i, t, _, _) in enumerate(chunk):
            nats[i] += float(per_row[j]) / t / samples
    model.train(was_training)
    nbytes = [enc.nbytes for enc in data]
    bpb, se = ratio_bpb(nats, nbytes)
    return BpbResult(bpb=bpb, se=se, nats=nats, nbytes=nbytes)
