"""Block-diffusion sampling for a BD3LM student, with a key/value cache.

Generation appends blocks of ``block_size`` mask tokens after the prompt and
denoises one block at a time. Inside the current block the model is run
``steps_per_block`` times; each run predicts every masked position and commits
the ``k`` most confident predictions (``remasking="low_confidence"``) or ``k``
random ones (``"random"``). A finished block becomes clean context for the next.

Attention (consistent with the training mask of SPEC 2.1): clean context -
the prompt and every finished block - is *block causal* (the ``x0`` half: a
token sees its own block and earlier blocks); the current noised block sees all
clean context and itself bidirectionally (the ``x_t`` half). So clean context
never depends on anything after it, and its keys and values can be cached:
with ``use_cache=True`` each finished block is run once, together with the
first denoising step of the next block, and appended to a
``transformers.DynamicCache``; later steps only run the current block. The
number of model forward calls is exactly the number of denoising steps in both
paths, and the cached path gives the same tokens as the uncached one (which
re-runs the whole sequence every step).

Block alignment (as dllm's BD3LM sampler, which produced the paper's numbers):
generated blocks start right after the prompt. The prompt is left-padded to a
multiple of ``block_size`` so that it *ends* on a block boundary; its own blocks
are counted from that end (its first block may be partial). Left padding is
invisible: pad keys are blocked and position ids count only real tokens, so a
prompt's output does not depend on the other prompts of its batch (greedy
decoding; sampling draws random numbers per batch shape).

Shapes: ``b`` prompts, ``T`` columns (padded prompt + generated blocks),
``B`` block size, ``V`` vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

Remasking = Literal["low_confidence", "random"]
REMASKING: tuple[str, ...] = ("low_confidence", "random")
SUPPORTED_ATTENTION: tuple[str, ...] = ("sdpa", "eager")


@dataclass
class SamplingConfig:
    """Settings of :func:`generate`, validated when built.

    ``steps`` is the total number of denoising steps over ``max_new_tokens``;
    block ``j`` of length ``L_j`` gets ``L_j * steps / max_new_tokens`` of them
    (for full blocks ``steps * block_size / max_new_tokens``), which must be a
    whole number. ``None`` means one token per step (``steps = max_new_tokens``).
    ``steps_per_block`` instead fixes the steps of every block (capped at the
    block's length); give one of the two at most.
    """

    mask_id: int
    block_size: int = 32
    max_new_tokens: int = 256
    steps: int | None = None
    steps_per_block: int | None = None
    remasking: Remasking = "low_confidence"
    temperature: float = 0.0
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    use_cache: bool = True
    block_steps: list[int] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.block_size <= 0:
            raise ValueError(f"block_size must be a positive integer, got {self.block_size}")
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens}")
        if self.remasking not in REMASKING:
            raise ValueError(f"remasking {self.remasking!r} is not one of {REMASKING}")
        if not (self.temperature >= 0.0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.steps is not None and self.steps_per_block is not None:
            raise ValueError(
                f"give steps ({self.steps}) or steps_per_block ({self.steps_per_block}), not both"
            )
        n, bs = self.max_new_tokens, self.block_size
        lengths = [min(bs, n - start) for start in range(0, n, bs)]
        if self.steps_per_block is not None:
            if self.steps_per_block <= 0:
                raise ValueError(f"steps_per_block must be a positive integer, got {self.steps_per_block}")
            self.block_steps = [min(self.steps_per_block, length) for length in lengths]
            return
        steps = n if self.steps is None else self.steps
        if not 0 < steps <= n:
            raise ValueError(f"steps must be in [1, max_new_tokens={n}], got {steps}")
        if any(length * steps % n for length in lengths):
            valid = [s for s in range(1, n + 1) if all(length * s % n == 0 for length in lengths)]
            raise ValueError(
                f"steps={steps} does not spread evenly over blocks: block lengths {sorted(set(lengths))} "
                f"of max_new_tokens={n} need steps * length / {n} to be whole; valid steps: {valid}"
            )
        self.block_steps = [length * steps // n for length in lengths]

    @property
    def total_steps(self) -> int:
        """Model forward calls a full generation makes (fewer if every row stops early)."""
        return sum(self.block_steps)


def transfer_schedule(n_masked: int, steps: int) -> list[int]:
    """Tokens to commit at each of ``steps`` steps for a block of ``n_masked``
    masks: as even as possible, the remainder in the earliest steps."""
    base, extra = divmod(n_masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _attention_kind(model: torch.nn.Module) -> str:
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or "sdpa"
    if impl not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"attention implementation {impl!r} cannot take the block-diffusion mask; "
            f"load the student with attn_implementation in {SUPPORTED_ATTENTION}"
        )
    return impl


def _new_cache(model: torch.nn.Module) -> Any:
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # transformers 4.x
        return DynamicCache()


def _cache_drop_last(cache: Any, n: int) -> None:
    if n > 0:  # crop(0) means "keep 0" in transformers 4.x
        cache.crop(-n)


def _cache_select_rows(cache: Any, rows: Tensor) -> None:
    cache.batch_select_indices(rows)


def _block_mask(
    valid: Tensor, q_start: int, q_end: int, block_size: int, attention: str, dtype: torch.dtype
) -> Tensor:
    """``[b, 1, q_end - q_start, q_end]`` mask for query columns ``[q_start, q_end)``
    over key columns ``[0, q_end)``: a key is visible iff it is a real token and
    its block is not after the query's (block causal, bidirectional inside a
    block). Pad query rows see only themselves, so no row is empty."""
    device = valid.device
    q_cols = torch.arange(q_start, q_end, device=device)
    k_cols = torch.arange(q_end, device=device)
    allowed = (k_cols[None, :] // block_size) <= (q_cols[:, None] // block_size)  # [q, k]
    mask = allowed.unsqueeze(0) & valid[:, None, :q_end]  # [b, q, k]
    own = q_cols[:, None] == k_cols[None, :]
    pad_rows = ~valid[:, q_start:q_end]  # [b, q]
    mask = mask | (own.unsqueeze(0) & pad_rows[:, :, None])
    mask = mask.unsqueeze(1)
    if attention == "eager":  # eager silently mishandles boolean 4D masks
        return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask


def _pick(
    logits: Tensor,
    masked: Tensor,
    k: int,
    *,
    remasking: str,
    temperature: float,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """One denoising step over a block. ``logits`` ``[b, L, V]`` (mask token
    already excluded), ``masked`` ``[b, L]`` bool with the same count per row.
    Returns predictions ``[b, L]`` and the ``[b, L]`` bool of positions to commit
    (``k`` per row, only among masked ones)."""
    logits = logits.float()
    if temperature > 0:
        u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float64)
        exponential = (-torch.log(u.clamp_min(1e-300))).clamp_min(1e-300)  # Exp(1) > 0
        gumbel = -torch.log(exponential)
        pred = (logits.double() / temperature + gumbel).argmax(dim=-1)
    else:
        pred = logits.argmax(dim=-1)
    if remasking == "low_confidence":
        # p(pred) = exp(z_pred - logsumexp(z)): no [b, L, V] softmax tensor
        conf = (logits.gather(-1, pred.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)).exp()
    else:
        conf = torch.rand(masked.shape, generator=generator, device=logits.device)
    conf = conf.masked_fill(~masked, -math.inf)
    chosen = conf.topk(k, dim=-1).indices
    commit = torch.zeros_like(masked).scatter_(1, chosen, True) & masked
    return pred, commit


def _stopped(row: list[int], stop_ids: set[int], stop_strings: Sequence[str], tokenizer: Any) -> bool:
    if stop_ids and any(t in stop_ids for t in row):
        return True
    if stop_strings and tokenizer is not None:
        text = tokenizer.decode(row, skip_special_tokens=False)
        return any(s in text for s in stop_strings)
    return False


def _trim(row: list[int], stop_ids: set[int]) -> list[int]:
    for i, t in enumerate(row):
        if t in stop_ids:
            return row[:i]
    return row


def default_stop_token_ids(model: torch.nn.Module, tokenizer: Any = None) -> tuple[int, ...]:
    """EOS ids of the tokenizer, else of the model's generation config or config."""
    found: list[int] = []
    sources = [getattr(tokenizer, "eos_token_id", None)] if tokenizer is not None else []
    sources += [
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        getattr(getattr(model, "config", None), "eos_token_id", None),
    ]
    for eos in sources:
        if eos is None:
            continue
        ids = [eos] if isinstance(eos, int) else list(eos)
        found += [i for i in ids if i not in found]
        if tokenizer is not None and found:
            break
    return tuple(found)


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    mask_id: int,
    block_size: int = 32,
    max_new_tokens: int = 256,
    steps: int | None = None,
    steps_per_block: int | None = None,
    remasking: Remasking = "low_confidence",
    temperature: float = 0.0,
    stop_token_ids: Sequence[int] | None = None,
    stop_strings: Sequence[str] = (),
    tokenizer: Any = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    on_forward: Callable[[int], None] | None = None,
    include_prompt: bool = False,
) -> list[list[int]]:
    """Generate continuations of ``prompts`` (lists of token ids) with a BD3LM student.

    :param model: a transformers causal-LM student (``sdpa`` or ``eager`` attention)
        returning ``.logits`` ``[b, q, V]``; it is run under ``inference_mode``.
    :param mask_id: the student's mask token id; it is never generated.
    :param steps: total denoising steps (default ``max_new_tokens``, one token per
        step); see :class:`SamplingConfig` for how they spread over blocks.
    :param stop_token_ids: a row stops after the block in which one appears, and
        its output is cut before the first one. ``None``: the EOS ids of the
        tokenizer (if given) or of the model config; ``()`` disables.
    :param stop_strings: a row stops after the block whose decoded text (needs
        ``tokenizer``) contains one; the ids are not cut (cut the text yourself).
    :param seed: seeds a fresh generator for sampling (``temperature > 0``) and
        for ``remasking="random"``; or pass ``generator``.
    :param use_cache: cache the keys/values of clean context (same tokens as without).
    :param on_forward: called with the number of query tokens of every model call.
    :param include_prompt: return ``prompt + generated`` instead of ``generated``.
    :return: one list of generated ids per prompt, at most ``max_new_tokens``
        long (after the prompt, unchanged, if ``include_prompt``).
    """
    if stop_strings and tokenizer is None:
        raise ValueError(f"stop_strings {list(stop_strings)!r} need a tokenizer to decode the generated ids")
    if stop_token_ids is None:
        stop_token_ids = default_stop_token_ids(model, tokenizer)
    cfg = SamplingConfig(
        mask_id=mask_id,
        block_size=block_size,
        max_new_tokens=max_new_tokens,
        steps=steps,
        steps_per_block=steps_per_block,
        remasking=remasking,
        temperature=temperature,
        stop_token_ids=tuple(stop_token_ids),
        stop_strings=tuple(stop_strings),
        use_cache=use_cache,
    )
    prompts = [list(p) for p in prompts]
    if not prompts:
        return []
    vocab = model.get_output_embeddings().weight.shape[0] if hasattr(model, "get_output_embeddings") else None
    if not 0 <= mask_id < (vocab or mask_id + 1):
        raise ValueError(f"mask_id {mask_id} is outside the model's vocabulary of {vocab}")
    for i, p in enumerate(prompts):
        if mask_id in p:
            raise ValueError(f"prompt {i} contains the mask token id {mask_id}; prompts must be clean text")

    device = _model_device(model)
    attention = _attention_kind(model)
    dtype = _model_dtype(model)
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    bs = cfg.block_size
    stop_ids = set(cfg.stop_token_ids)

    # Columns: [left pad | prompt] (a multiple of B) then the generated blocks.
    b = len(prompts)
    lengths = [len(p) for p in prompts]
    t0 = -(-max(lengths) // bs) * bs
    total = t0 + cfg.max_new_tokens
    x = torch.full((b, total), mask_id, dtype=torch.long, device=device)
    valid = torch.ones((b, total), dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):
        valid[i, : t0 - len(p)] = False
        if p:
            x[i, t0 - len(p) : t0] = torch.tensor(p, dtype=torch.long, device=device)
    positions = (valid.long().cumsum(dim=1) - 1).clamp_min(0)

    rows = torch.arange(b, device=device)  # original index of each active row
    outputs: list[list[int] | None] = [None] * b
    cache = _new_cache(model) if cfg.use_cache else None
    cached = 0  # columns whose keys/values are in the cache

    for j, n_steps in enumerate(cfg.block_steps):
        start = t0 + j * bs
        end = min(start + bs, total)
        for k in transfer_schedule(end - start, n_steps):
            q_start = cached if cfg.use_cache else 0
            mask = _block_mask(valid, q_start, end, bs, attention, dtype)
            kwargs: dict[str, Any] = dict(
                input_ids=x[:, q_start:end],
                attention_mask=mask,
                position_ids=positions[:, q_start:end],
                logits_to_keep=end - start,
            )
            if cfg.use_cache:
                kwargs.update(past_key_values=cache, use_cache=True)
            else:
                kwargs.update(use_cache=False)
            if on_forward is not None:
                on_forward(end - q_start)
            logits = model(**kwargs).logits[:, -(end - start) :]
            if cfg.use_cache:
                _cache_drop_last(cache, end - start)  # keep clean columns only
                cached = start
            logits[..., mask_id] = -math.inf
            block = x[:, start:end]
            pred, commit = _pick(
                logits,
                block == mask_id,
                k,
                remasking=cfg.remasking,
                temperature=cfg.temperature,
                generator=generator,
            )
            x[:, start:end] = torch.where(commit, pred, block)
        # The block is finished: rows that hit a stop leave the batch.
        keep: list[int] = []
        gen = x[:, t0:end].tolist()
        for r, row in enumerate(gen):
            if end == total or _stopped(row, stop_ids, cfg.stop_strings, tokenizer):
                outputs[int(rows[r])] = _trim(row, stop_ids)
            else:
                keep.append(r)
        if not keep:
            break
        if len(keep) < len(gen):
            sel = torch.tensor(keep, device=device)
            x, valid, positions, rows = x[sel], valid[sel], positions[sel], rows[sel]
            if cache is not None:
                _cache_select_rows(cache, sel)
    done = [o if o is not None else [] for o in outputs]
    return [p + o for p, o in zip(prompts, done)] if include_prompt else done
