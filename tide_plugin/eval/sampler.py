"""Block-diffusion sampling for a BD3LM student, with a key/value cache.

Generation appends blocks of ``block_size`` mask tokens after the prompt and
denoises one block at a time. Each model call predicts every masked position
of the current block, with a confidence per position (``p(pred)`` under
``remasking="low_confidence"``, uniform noise under ``"random"``), and a
*decoder* (:mod:`tide_plugin.eval.decoders`, a registered plugin kind) chooses
which to commit: ``one_per_step`` (default, the paper's protocol) follows the
``steps`` schedule, ``threshold`` commits every position whose confidence
passes ``tau``, ``fixed_k`` the ``k`` most confident. A block is finished when
nothing in it is masked, or, for a row, as soon as a stop token is committed
with nothing masked before it (what follows is cut anyway). A finished block
becomes clean context for the next; the generation ends when every row stopped.

Attention (consistent with the training mask of docs/method.md#student-forward): clean context -
the prompt and every finished block - is *block causal* (the ``x0`` half: a
token sees its own block and earlier blocks); the current noised block sees all
clean context and itself bidirectionally (the ``x_t`` half). So clean context
never depends on anything after it, and its keys and values can be cached:
with ``use_cache=True`` each finished block is run once, together with the
first denoising step of the next block, and appended to a
``transformers.DynamicCache``; later steps only run the current block. Both
paths make the same model calls (for ``one_per_step`` exactly the scheduled
steps, fewer only when a stop token ends a block early; pass ``stats`` to count
them), and the cached path gives the same tokens as the uncached one (which
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ..hookspecs import DEFAULT_BLOCK_SIZE
from .block_cache import SUPPORTED_ATTENTION, BlockCanvas
from .decoders import DEFAULT_DECODER, describe, get_decoder, top_k_commit, transfer_schedule
from .stops import Stops, default_stop_token_ids

__all__ = ["REMASKING", "SUPPORTED_ATTENTION", "SamplingConfig", "SamplingStats", "default_stop_token_ids", "generate", "transfer_schedule"]

Remasking = Literal["low_confidence", "random"]
REMASKING: tuple[str, ...] = ("low_confidence", "random")


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
    block_size: int = DEFAULT_BLOCK_SIZE
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


@dataclass
class SamplingStats:
    """What a generation did; pass one to :func:`generate` (it adds to the counts,
    so one object can sum several generations).

    ``tokens_per_call`` = committed positions / row-calls, where a model call on a
    batch of ``r`` rows counts ``r`` row-calls: 1.0 for ``one_per_step`` with the
    default steps, whatever the batch size.
    """

    decoder: dict[str, Any] = field(default_factory=dict)
    calls: int = 0
    row_calls: int = 0
    tokens: int = 0

    @property
    def tokens_per_call(self) -> float:
        return self.tokens / self.row_calls if self.row_calls else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**self.decoder, "tokens_per_call": round(self.tokens_per_call, 4), "model_calls": self.calls,
                "row_calls": self.row_calls, "committed_tokens": self.tokens}


def _predict(
    logits: Tensor, masked: Tensor, *, remasking: str, temperature: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """Predictions ``[b, L]`` long and their confidences ``[b, L]`` float32
    (``-inf`` where not ``masked``) from ``logits`` ``[b, L, V]`` (mask token
    already excluded)."""
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
    return pred, conf.masked_fill(~masked, -math.inf)


def _pick(
    logits: Tensor,
    masked: Tensor,
    k: int,
    *,
    remasking: str,
    temperature: float,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """One fixed-``k`` step: predictions ``[b, L]`` and the ``[b, L]`` bool of the
    ``k`` most confident masked positions per row."""
    pred, conf = _predict(logits, masked, remasking=remasking, temperature=temperature, generator=generator)
    return pred, top_k_commit(conf, masked, k)


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    mask_id: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
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
    decoder: str | Any = DEFAULT_DECODER,
    decoder_options: Mapping[str, Any] | None = None,
    stats: SamplingStats | None = None,
) -> list[list[int]]:
    """Generate continuations of ``prompts`` (lists of token ids) with a BD3LM student.

    :param model: a transformers causal-LM student (``sdpa`` or ``eager`` attention)
        returning ``.logits`` ``[b, q, V]``; it is run under ``inference_mode``.
    :param mask_id: the student's mask token id; it is never generated.
    :param steps: total denoising steps (default ``max_new_tokens``, one token per
        step); see :class:`SamplingConfig` for how they spread over blocks.
    :param stop_token_ids: a row's output is cut before the first one, and the
        row stops with the block that holds it, as soon as nothing before it is
        still masked. ``None``: the EOS ids of the
        tokenizer (if given) or of the model config; ``()`` disables.
    :param stop_strings: a row stops after the block whose decoded text (needs
        ``tokenizer``) contains one; the ids are not cut (cut the text yourself).
    :param seed: seeds a fresh generator for sampling (``temperature > 0``) and
        for ``remasking="random"``; or pass ``generator``.
    :param use_cache: cache the keys/values of clean context (same tokens as without).
    :param on_forward: called with the number of query tokens of every model call.
    :param include_prompt: return ``prompt + generated`` instead of ``generated``.
    :param decoder: a registered decoder name (``one_per_step``, ``threshold``,
        ``fixed_k``, or a plugin's) built with ``decoder_options``, or a built
        decoder (:class:`tide_plugin.hookspecs.Decoder`). ``steps`` and
        ``steps_per_block`` are the ``budget`` it is given per block (only
        ``one_per_step`` of the built-ins follows it).
    :param stats: a :class:`SamplingStats` to add this generation's model calls
        and committed tokens to.
    :return: one list of generated ids per prompt, at most ``max_new_tokens``
        long (after the prompt, unchanged, if ``include_prompt``).
    """
    stop_token_ids = _stop_ids(model, tokenizer, mask_id, stop_token_ids, stop_strings)
    dec = _decoder(decoder, decoder_options)
    if stats is not None:
        stats.decoder = describe(dec)
    cfg = SamplingConfig(
        mask_id=mask_id,
        block_size=block_size,
        max_new_tokens=max_new_tokens,
        steps=steps,
        steps_per_block=steps_per_block,
        remasking=remasking,
        temperature=temperature,
        stop_token_ids=stop_token_ids,
        stop_strings=tuple(stop_strings),
        use_cache=use_cache,
    )
    prompts = [list(p) for p in prompts]
    if not prompts:
        return []
    _check_prompts(model, prompts, mask_id)
    canvas = BlockCanvas(model, prompts, mask_id=mask_id, block_size=cfg.block_size,
                         max_new_tokens=cfg.max_new_tokens, use_cache=cfg.use_cache)
    if generator is None and seed is not None:
        generator = torch.Generator(device=canvas.device).manual_seed(seed)
    stops = Stops(cfg.stop_token_ids, cfg.stop_strings, tokenizer, canvas.device)
    outputs: list[list[int] | None] = [None] * len(prompts)
    tally = _Tally(committed=torch.zeros((), dtype=torch.long, device=canvas.device))
    for j, budget in enumerate(cfg.block_steps):
        _denoise_block(canvas, j, budget, dec, cfg, stops, generator, on_forward, tally)
        if not _retire_rows(canvas, j, stops, outputs):
            break
    if stats is not None:
        stats.calls += tally.calls
        stats.row_calls += tally.row_calls
        stats.tokens += int(tally.committed)
    done = [o if o is not None else [] for o in outputs]
    return [p + o for p, o in zip(prompts, done)] if include_prompt else done


def _decoder(decoder: str | Any, options: Mapping[str, Any] | None) -> Any:
    """The decoder :func:`generate` uses: a registered name built with ``options``, or a built one."""
    if isinstance(decoder, str):
        return get_decoder(decoder, **dict(options or {}))
    if options:
        raise ValueError(f"decoder_options {dict(options)} go with a decoder name, not a built decoder")
    return decoder


def _stop_ids(model: torch.nn.Module, tokenizer: Any, mask_id: int, stop_token_ids: Sequence[int] | None,
              stop_strings: Sequence[str]) -> tuple[int, ...]:
    """The stop ids :func:`generate` uses (``None``: the EOS ids), checked with the stop strings."""
    if stop_strings and tokenizer is None:
        raise ValueError(f"stop_strings {list(stop_strings)!r} need a tokenizer to decode the generated ids")
    if stop_token_ids is None:
        stop_token_ids = default_stop_token_ids(model, tokenizer)
    if mask_id in stop_token_ids:
        raise ValueError(f"stop_token_ids {list(stop_token_ids)} contain the mask token id {mask_id}")
    return tuple(stop_token_ids)


def _check_prompts(model: torch.nn.Module, prompts: list[list[int]], mask_id: int) -> None:
    vocab = model.get_output_embeddings().weight.shape[0] if hasattr(model, "get_output_embeddings") else None
    if not 0 <= mask_id < (vocab or mask_id + 1):
        raise ValueError(f"mask_id {mask_id} is outside the model's vocabulary of {vocab}")
    for i, p in enumerate(prompts):
        if mask_id in p:
            raise ValueError(f"prompt {i} contains the mask token id {mask_id}; prompts must be clean text")


@dataclass
class _Tally:
    """The counts of one generation (``committed`` stays on the device: no sync per call)."""

    committed: Tensor
    calls: int = 0
    row_calls: int = 0


def _denoise_block(
    canvas: BlockCanvas,
    j: int,
    budget: int,
    dec: Any,
    cfg: SamplingConfig,
    stops: Stops,
    generator: torch.Generator | None,
    on_forward: Callable[[int], None] | None,
    tally: _Tally,
) -> None:
    """Denoise block ``j`` until nothing in it is masked or every row's output is
    settled by a stop token; ``budget``: the calls the steps schedule gives it."""
    start, end = canvas.block(j)
    planned = dec.calls(end - start, budget)
    call = 0
    while True:
        logits = canvas.logits(start, end, on_forward)
        logits[..., cfg.mask_id] = -math.inf
        block = canvas.x[:, start:end]
        masked = block == cfg.mask_id
        pred, conf = _predict(logits, masked, remasking=cfg.remasking, temperature=cfg.temperature, generator=generator)
        commit = dec.select(conf, masked, call=call, budget=budget) & masked
        canvas.x[:, start:end] = torch.where(commit, pred, block)
        call += 1
        tally.calls += 1
        tally.row_calls += canvas.x.shape[0]
        tally.committed += commit.sum()
        if planned is not None and call < planned and stops.id_tensor is None:
            continue  # a fixed schedule needs no look at the tokens (no device sync)
        remaining = canvas.x[:, start:end] == cfg.mask_id
        stalled = masked.any(dim=-1) & ~commit.any(dim=-1)
        finished = ~remaining.any(dim=-1) | stops.settled(canvas.x[:, start:end], remaining)
        flags = torch.stack([stalled.any(), finished.all()]).tolist()
        if flags[0]:
            raise RuntimeError(
                f"decoder {describe(dec)} committed nothing in a row with masked positions "
                f"(block {j}, call {call}); a decoder must commit at least one per row"
            )
        if flags[1]:
            return
        if planned is not None and call >= planned:
            raise RuntimeError(
                f"decoder {describe(dec)} planned {planned} calls for block {j} but left positions masked after them"
            )


def _retire_rows(canvas: BlockCanvas, j: int, stops: Stops, outputs: list[list[int] | None]) -> bool:
    """Block ``j`` is finished: the rows that hit a stop (every row after the last block)
    leave the canvas, their output trimmed into ``outputs``. Whether any row is left."""
    _, end = canvas.block(j)
    keep: list[int] = []
    gen = canvas.x[:, canvas.t0 : end].tolist()
    for r, row in enumerate(gen):
        if end == canvas.total or stops.stopped(row):
            outputs[int(canvas.rows[r])] = stops.trim(row)
        else:
            keep.append(r)
    if keep and len(keep) < len(gen):
        canvas.keep_rows(keep)
    return bool(keep)
