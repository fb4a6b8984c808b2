"""Training the study's teachers (once; cached by a hash of their config).

- pipeline A: a bidirectional masked-diffusion MoE (LLaDA2's shape in miniature) on the
  cross (SentencePiece-style) tokenizer: the response is noised, the prompt stays clean,
  full attention;
- pipeline B: a dense block-diffusion model with ``x0 ⊕ x_t`` order (WeDLM's) on the
  student's vocabulary under another chat template.

Both minimise the loss the held-out metric estimates: the NELBO of the response
(``-alpha'(t)/(1 - alpha(t))``-weighted masked CE, ``1/t`` under the linear schedule,
per-target normalised), with ``t`` stratified over the batch. Each model is read through
its registered teacher adapter (:func:`teacher_adapter`), the way a distillation run and
the held-out score read it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..eval.heldout import Encoded, masking_schedule


def teacher_adapter(which: str, block_size: int) -> tuple[str, dict[str, Any]]:
    """How study teacher ``which`` reads its input: the registered adapter's name and
    options. Teacher B was trained with blocked block padding, so it is read that way."""
    adapters = {
        "A": ("bidirectional", {}),
        "B": ("block", {"concat_order": "x0_xt", "block_padding": "blocked", "block_size": int(block_size)}),
    }
    if which not in adapters:
        raise ValueError(f"study teacher {which!r} is not one of {tuple(adapters)}")
    return adapters[which]


def study_teacher(which: str, model: torch.nn.Module, block_size: int) -> Any:
    """The registered adapter over teacher ``which``'s model (it freezes the model and puts
    it in eval mode)."""
    from ..registry import get_teacher

    name, options = teacher_adapter(which, block_size)
    return get_teacher(name, model=model, **options)


@dataclass(frozen=True)
class TrainSchedule:
    """A plain AdamW schedule: linear warm-up, cosine decay to 10%."""

    steps: int = 400
    batch_size: int = 16
    lr: float = 2e-3
    warmup: int = 40
    weight_decay: float = 0.01
    max_length: int = 256
    block_size: int = 32
    """Teacher B's block size while it trains (its adapter, :func:`study_teacher`, reads it)."""
    eps: float = 1e-3
    seed: int = 0
    validate_every: int = 0
    """Score a validation set every N steps and keep the best weights (0: never)."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_length", "block_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} {getattr(self, name)} must be a positive int")
        if not self.lr > 0:
            raise ValueError(f"lr {self.lr} must be > 0")

    def lr_at(self, step: int, total: int | None = None) -> float:
        total = total or self.steps
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, total - self.warmup)
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _batch(data: Sequence[Encoded], idx: list[int], pad_id: int, max_length: int):
    seqs = [(data[i].ids[:max_length], data[i].targets[:max_length]) for i in idx]
    longest = max(len(s) for s, _ in seqs)  # a block adapter pads to its block multiple itself
    clean = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    targets = torch.zeros(len(seqs), longest, dtype=torch.bool)
    valid = torch.zeros(len(seqs), longest, dtype=torch.bool)
    for j, (ids, tg) in enumerate(seqs):
        clean[j, : len(ids)] = torch.tensor(ids)
        targets[j, : len(ids)] = torch.tensor(tg)
        valid[j, : len(ids)] = True
    return clean, targets, valid


def train_diffusion_lm(
    teacher: Any,
    data: Sequence[Encoded],
    schedule: TrainSchedule,
    *,
    mask_id: int,
    pad_id: int,
    device: str = "cpu",
    time_budget_s: float | None = None,
    progress: bool = True,
    desc: str = "teacher",
    validate: Callable[[torch.nn.Module], float] | None = None,
    noise_schedule: str | Any = "linear",
) -> dict[str, Any]:
    """Train the model of ``teacher`` (a registered adapter over it,
    :func:`study_teacher`: the adapter decides how it reads the noised ids) on ``data``;
    returns a summary (steps done, wall seconds, loss trace). The schedule is shortened to
    fit ``time_budget_s``. With ``validate`` (lower is better, called in eval mode) and
    ``schedule.validate_every``, the best-scoring weights are kept (a small model trained
    long on a small corpus overfits). ``noise_schedule``: the masking schedule (registered
    name or built). The model is left in eval mode with gradients off."""
    from tqdm.auto import tqdm

    from ..collators.noise import draw_mask

    if not data:
        raise ValueError("no training sequences")
    sched = masking_schedule(noise_schedule)
    gen = torch.Generator().manual_seed(schedule.seed)
    model = teacher.model
    model.to(device).requires_grad_(True).train()  # the adapter froze it
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": schedule.weight_decay}, {"params": other, "weight_decay": 0.0}],
        lr=schedule.lr,
        betas=(0.9, 0.98),
    )
    use_amp = str(device).startswith("cuda")
    order: list[int] = []
    trace: list[tuple[int, float]] = []
    start, running, done = time.time(), None, 0
    best: tuple[float, int, dict] | None = None
    valid_trace: list[tuple[int, float]] = []
    total = schedule.steps  # shortened once the time budget says the schedule cannot finish
    bar = tqdm(total=schedule.steps, desc=desc, disable=not progress, mininterval=2.0)
    for step in range(schedule.steps):
        if step >= total:
            break
        if step == 20:
            t20 = time.time()  # the first steps include warm-up (allocator, kernels): time the next ones
        if step == 60 and time_budget_s is not None:
            per_step = (time.time() - t20) / 40
            total = max(61, min(schedule.steps, 60 + int((time_budget_s - (time.time() - start)) / per_step)))
            bar.total = total
        if not order:
            order = torch.randperm(len(data), generator=gen).tolist()
        idx, order = order[: schedule.batch_size], order[schedule.batch_size :]
        clean, targets, valid = _batch(data, idx, pad_id, schedule.max_length)
        b = clean.shape[0]
        u = torch.rand(1, generator=gen).item()
        t = schedule.eps + (1 - schedule.eps) * (torch.arange(b, dtype=torch.float32) + u) / b  # stratified
        t = t[torch.randperm(b, generator=gen)]
        p, masked = draw_mask(t, targets, sched, gen)
        rate = -torch.as_tensor(sched.alpha_prime(t), dtype=torch.float32)
        clean, targets, valid, masked, p, rate = (x.to(device) for x in (clean, targets, valid, masked, p, rate))
        noisy = torch.where(masked, torch.full_like(clean, mask_id), clean)
        for group in opt.param_groups:
            group["lr"] = schedule.lr_at(step, total)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            logits = teacher.forward_view(noisy, clean, valid)
        nll = torch.nn.functional.cross_entropy(logits[masked].float(), clean[masked], reduction="none")
        weight = (rate / p)[:, None].expand_as(masked)[masked]  # -alpha'(t) / (1 - alpha(t)): 1/t if linear
        loss = (nll * weight).sum() / targets.sum().clamp_min(1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        done = step + 1
        value = float(loss.detach())
        running = value if running is None else 0.98 * running + 0.02 * value
        bar.update(1)
        if validate is not None and schedule.validate_every and (done % schedule.validate_every == 0 or done == total):
            model.eval()
            score = validate(model)
            model.train()
            valid_trace.append((done, score))
            if best is None or score < best[0]:
                best = (score, done, {k: v.detach().clone() for k, v in model.state_dict().items()})
        if step % 25 == 0 or done == total:
            trace.append((done, running))
            bar.set_postfix(nelbo_per_token=f"{running:.3f}")
    bar.close()
    model.eval().requires_grad_(False)
    kept = done
    if best is not None:
        model.load_state_dict(best[2])
        kept = best[1]
    return {"steps_done": done, "steps_planned": schedule.steps, "kept_step": kept, "valid_trace": valid_trace, "wall_seconds": round(time.time() - start, 1), "loss_trace": trace}
