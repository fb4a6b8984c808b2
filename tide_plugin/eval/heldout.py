"""Held-out bits per UTF-8 byte from a model's own masked-diffusion NELBO
(docs/method.md#sampling-and-evaluation): ``tide study``, ``tide distill --heldout`` and the
trainer's held-out evaluation all score here.

For one conversation the targets are the tokens that overlap the assistant's content (its
end-of-turn token included, when the template writes one inside the span; the prompt is
never noised). With a masking schedule ``alpha(t)`` (docs/method.md#noising; any registered
``masking_schedule``) the NELBO of the targets given the prompt is::

    NELBO = E_{t ~ U(eps, 1)} [ -alpha'(t) / (1 - alpha(t)) * sum_{i masked at t} -log p(x0_i | x_t) ]

(``1/t`` for the linear schedule), each target masked with probability ``1 - alpha(t)``.
Monte Carlo: ``K`` stratified times per sequence (``t_k = eps + (1 - eps) (k + u_k) / K``)
and Bernoulli masks (:func:`~tide_plugin.collators.noise.draw_mask`, the ``noise`` stage's
rule), all from generators seeded by ``(seed, sequence index)``, so every model with the
same tokenizer sees the same noise and differences are paired.

A model is read through a :class:`Reader`, ``(noisy, clean, valid) -> logits``: the
student through its BD3LM forward (:func:`student_reader`, the trainer's), a teacher
through its registered adapter (:func:`teacher_reader`, any ``teacher`` plugin), so one
``t`` per sequence covers all of a block model's blocks (unbiased for the sum of the
per-block NELBOs) and a bidirectional model sees the whole noised response. Bits per
byte = ``sum NELBO / ln 2 / sum bytes`` over the held-out set, bytes being the UTF-8 bytes
of the assistant contents: the number does not depend on the tokenizer, so teachers and
students compare. The standard error is the ratio estimator's over sequences.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

DEFAULT_SAMPLES = 2
DEFAULT_SEED = 1234
DEFAULT_EPS = 1e-3


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


def encode_heldout(conversations: Sequence[Mapping[str, Any]], tokenizer: Any) -> list[Encoded]:
    """Held-out encodings (never truncated: every model is scored on the same bytes)."""
    return [encode_targets(tokenizer, c["messages"]) for c in conversations]


def load_heldout(heldout: str | Path | Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Conversations (``{"messages": [...]}``) from a chat JSONL path, or as given."""
    if isinstance(heldout, (str, Path)):
        from ..alignment.preprocess import load_jsonl

        return load_jsonl(str(heldout))
    return list(heldout)


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


def paired_change(before: BpbResult, after: BpbResult) -> tuple[float, float]:
    """After minus before in bits per byte, with its standard error over the held-out
    sequences (the same sequences and noise draws both times, so the difference is paired)."""
    return ratio_bpb([a - b for a, b in zip(after.nats, before.nats)], before.nbytes)


class Reader:
    """How a model reads noised ids: ``reader(noisy, clean, valid) -> logits [n, L, V]``
    for ``[n, L]`` ids (``valid`` False on padding), with inputs placed on ``device``."""

    def __init__(self, forward: Callable[[Tensor, Tensor, Tensor], Tensor], device: torch.device | str) -> None:
        self.forward, self.device = forward, torch.device(device)

    def __call__(self, noisy: Tensor, clean: Tensor, valid: Tensor) -> Tensor:
        return self.forward(noisy, clean, valid)


def student_reader(model: torch.nn.Module, block_size: int) -> Reader:
    """The BD3LM student's forward (``x_t ⊕ x0``, docs/method.md#student-forward), as the
    trainer runs it; rows are padded to a block multiple with blocked keys."""
    from ..bd3lm import block_diffusion_logits
    from ..teachers.block import pad_to_block

    def forward(noisy: Tensor, clean: Tensor, valid: Tensor) -> Tensor:
        length = noisy.shape[1]
        noisy, clean, valid = pad_to_block(noisy, clean, valid, int(block_size), None)
        logits = block_diffusion_logits(model, noisy, clean, block_size=int(block_size), attention_mask=valid)
        return logits[:, :length]

    return Reader(forward, next(model.parameters()).device)


def teacher_reader(teacher: Any) -> Reader:
    """A teacher through its adapter (any registered ``teacher``: ``bidirectional``,
    ``block``, a plugin's), exactly as a run reads it: the noised ids go in as a batch of
    the ``same`` pipeline (the teacher reads these ids with their own mask)."""
    from ..batch import DistillBatch

    def forward(noisy: Tensor, clean: Tensor, valid: Tensor) -> Tensor:
        batch = DistillBatch(pipeline="same", input_ids=clean, labels=torch.where(valid, clean, -100),
                             attention_mask=valid, noisy_input_ids=noisy, teacher_noisy_ids=noisy[None])
        return teacher(batch)

    return Reader(forward, getattr(teacher, "device", "cpu"))


def masking_schedule(schedule: str | Any) -> Any:
    """A masking schedule by registered name, or one already built."""
    if isinstance(schedule, str):
        from ..registry import get_masking_schedule

        return get_masking_schedule(schedule)
    return schedule


def sequence_noise(index: int, targets: Tensor, samples: int, seed: int, eps: float,
                   schedule: str | Any = "linear") -> tuple[Tensor, Tensor, Tensor]:
    """``(t [K], p [K], masked [K, n])`` for sequence ``index``: ``K`` stratified times,
    their mask probabilities ``p = 1 - alpha(t)`` and a Bernoulli(``p``) mask of the targets
    per time, from a generator seeded by ``(seed, index)`` (independent of batching and of
    the model), in float64."""
    from ..collators.noise import draw_mask

    gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(index)) % (2**63))
    u = torch.rand(samples, generator=gen, dtype=torch.float64)
    t = eps + (1 - eps) * (torch.arange(samples, dtype=torch.float64) + u) / samples
    p, masked = draw_mask(t, targets[None].expand(samples, -1), masking_schedule(schedule), gen)
    return t, p, masked


@torch.no_grad()
def heldout_bpb(
    reader: Reader,
    data: Sequence[Encoded],
    *,
    mask_id: int,
    pad_id: int,
    schedule: str | Any = "linear",
    samples: int = 4,
    seed: int = DEFAULT_SEED,
    eps: float = DEFAULT_EPS,
    max_tokens: int = 8192,
) -> BpbResult:
    """NELBO bits per byte of ``data`` read by ``reader`` (see the module docstring).

    :param schedule: the masking schedule (registered name or built), ``linear`` by default.
    :param samples: ``K``, Monte Carlo times per sequence (stratified).
    :param max_tokens: rows per forward are chosen so that rows x length stays below this.
    """
    if samples < 1:
        raise ValueError(f"samples {samples} must be >= 1")
    if not 0 < eps < 1:
        raise ValueError(f"eps {eps} must lie in (0, 1): the NELBO's weight is unbounded at t = 0")
    if not data:
        raise ValueError("the held-out set is empty: give at least one conversation")
    sched = masking_schedule(schedule)
    rows: list[tuple[int, float, float, Tensor, Tensor]] = []  # (sequence, -alpha'(t), 1 - alpha(t), ids, masked)
    for i, enc in enumerate(data):
        ids = torch.tensor(enc.ids, dtype=torch.long)
        t, p, masked = sequence_noise(i, torch.tensor(enc.targets, dtype=torch.bool), samples, seed, eps, sched)
        rate = -torch.as_tensor(sched.alpha_prime(t), dtype=torch.float64)
        rows += [(i, float(rate[k]), float(p[k]), ids, masked[k]) for k in range(samples)]
    rows.sort(key=lambda r: r[3].numel())
    nats = [0.0] * len(data)
    start = 0
    while start < len(rows):
        end = start + 1  # rows are sorted by length: the last one of a chunk is its longest
        while end < len(rows) and (end - start + 1) * rows[end][3].numel() <= max_tokens:
            end += 1
        chunk, start = rows[start:end], end
        longest = max(r[3].numel() for r in chunk)
        clean = torch.full((len(chunk), longest), pad_id, dtype=torch.long)
        masked = torch.zeros(len(chunk), longest, dtype=torch.bool)
        valid = torch.zeros(len(chunk), longest, dtype=torch.bool)
        for j, (_, _, _, ids, m) in enumerate(chunk):
            clean[j, : ids.numel()], masked[j, : ids.numel()], valid[j, : ids.numel()] = ids, m, True
        clean, masked, valid = clean.to(reader.device), masked.to(reader.device), valid.to(reader.device)
        noisy = torch.where(masked, torch.full_like(clean, mask_id), clean)
        logits = reader(noisy, clean, valid)
        masked = masked.to(logits.device)
        nll = torch.nn.functional.cross_entropy(logits[masked].float(), clean.to(logits.device)[masked], reduction="none")
        per_row = torch.zeros(len(chunk), dtype=torch.float64, device=logits.device)
        per_row.index_add_(0, masked.nonzero()[:, 0], nll.double())
        for j, (i, rate, p, _, _) in enumerate(chunk):  # the weight -alpha'(t) / (1 - alpha(t)): 1/t if linear
            nats[i] += float(per_row[j]) * rate / p / samples
    nbytes = [enc.nbytes for enc in data]
    bpb, se = ratio_bpb(nats, nbytes)
    return BpbResult(bpb=bpb, se=se, nats=nats, nbytes=nbytes)


def score_student(model: torch.nn.Module, data: Sequence[Encoded], tokenizer: Any, *, block_size: int,
                  **options: Any) -> BpbResult:
    """:func:`heldout_bpb` of a BD3LM student (in eval mode for the scoring, its mode
    restored after), with its tokenizer's mask and pad ids."""
    was_training = model.training
    model.eval()
    try:
        return heldout_bpb(student_reader(model, block_size), data, mask_id=tokenizer.mask_token_id,
                           pad_id=tokenizer.pad_token_id, **options)
    finally:
        model.train(was_training)


def score_teacher(teacher: Any, data: Sequence[Encoded], tokenizer: Any, **options: Any) -> BpbResult:
    """:func:`heldout_bpb` of a teacher adapter with its tokenizer's mask and pad ids."""
    return heldout_bpb(teacher_reader(teacher), data, mask_id=tokenizer.mask_token_id, pad_id=tokenizer.pad_token_id,
                       **options)


def heldout_scorer(heldout: str | Path | Sequence[Mapping[str, Any]], student_tok: Any, teacher_tok: Any, *,
                   block_size: int, schedule: str | Any = "linear", samples: int = DEFAULT_SAMPLES,
                   seed: int = DEFAULT_SEED) -> tuple[Callable[[torch.nn.Module], BpbResult], Callable[[Any], BpbResult]]:
    """``(score_student(model), score_teacher(adapter))`` on the held-out conversations
    (a chat JSONL path or ``{"messages": [...]}`` rows), each encoded once per tokenizer;
    each returns a :class:`BpbResult` (bits per byte, its s.e., nats per sequence)."""
    rows = load_heldout(heldout)
    s_data, t_data = encode_heldout(rows, student_tok), encode_heldout(rows, teacher_tok)
    options = {"schedule": schedule, "samples": samples, "seed": seed}

    def student(model: torch.nn.Module) -> BpbResult:
        return score_student(model, s_data, student_tok, block_size=block_size, **options)

    def teacher(adapter: Any) -> BpbResult:
        return score_teacher(adapter, t_data, teacher_tok, **options)

    return student, teacher
