"""``noise``: the forward diffusion process of docs/method.md#noising with the mask propagation
of docs/method.md#mask-propagation. ``DistillBatch -> DistillBatch``.

Per example ``t ~ U[eps, 1)``; ``p = 1 - alpha(t)`` from the masking schedule
(``linear``, ``cosine`` or a third party's, built by name through the registry);
``maskable = labels != -100``; ``masked = (u < p) & maskable``;
``x_t = where(masked, m_S, x0)``; ``ce_time_weight = w(t)`` (``elbo``: ``-alpha'/(1-alpha)``,
or ``uniform``: 1).

Teacher side, by pipeline (:meth:`tide_plugin.pipelines.PipelineStrategy.propagate_mask`):

- ``same``: the teacher uses the student's mask (its ids are the student's).
- ``shared``: teacher positions paired with masked student positions are masked.
- ``cross`` (chunk-consistent masking, docs/method.md#mask-propagation): every
  maskable student token and every teacher token of a masked chunk is masked.
  ``chunk_noise="unbiased"`` (default) masks each chunk with one Bernoulli(``p``)
  draw, so every token's marginal mask probability stays ``p`` and ``w(t)`` stays
  unbiased; ``"reference"`` masks a chunk as soon as the per-token draw hits one
  of its student tokens (more than ``p``). Tokens outside every chunk keep the
  per-token draw. ``chunk_active`` = masked chunks that hold no prompt (label
  -100) token.

Fills (shapes): ``t`` ``[b]`` float32, ``masked`` ``[b, L]`` bool,
``noisy_input_ids`` ``[b, L]``, ``ce_time_weight`` ``[b]`` float32, ``teacher_masked``
``[b, L_T]`` bool, ``teacher_noisy_ids`` ``[1, b, L_T]`` (``L_T = L`` for same),
``chunk_active`` ``[b, C]`` bool (cross, ``C = max num_chunks``).

Randomness comes from a ``torch.Generator`` owned by the stage, reseeded on
every call from ``(seed, stage, distributed rank, DataLoader worker id, call
counter)``: a fixed seed reproduces every batch, and DataLoader workers draw
different but reproducible streams.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ..batch import DistillBatch
from ..hookspecs import PluginSpec, hookimpl
from ..pipelines import CHUNK_NOISE_RULES, IGNORE_INDEX, ChunkNoise, get_pipeline

CE_WEIGHTINGS: tuple[str, ...] = ("elbo", "uniform")

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def stream_seed(*parts: int) -> int:
    """Mix integers into one 63-bit seed (order matters, nearby inputs give
    unrelated seeds)."""
    h = 0x243F6A8885A308D3
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _MASK64))
    return h & ((1 << 63) - 1)


def _worker_id() -> int:
    info = torch.utils.data.get_worker_info()
    return 0 if info is None else int(info.id)


def _rank() -> int:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    return 0


class SeededStage:
    """Owns a ``torch.Generator`` reseeded per call from (seed, stage salt, rank,
    worker id, call counter). Each DataLoader worker holds its own copy of the
    stage, so its counter counts that worker's batches."""

    salt: int = 0

    def _init_rng(self, seed: int) -> None:
        self.seed = int(seed)
        self.calls = 0
        self._generator = torch.Generator()

    def resume(self, batches_done: int) -> None:
        """Continue the stream as if ``batches_done`` batches had been collated (a
        resumed run skips the batches it has seen without collating them)."""
        if isinstance(batches_done, bool) or not isinstance(batches_done, int) or batches_done < 0:
            raise ValueError(f"batches_done must be an int >= 0, got {batches_done!r}")
        self.calls = batches_done

    def next_generator(self) -> torch.Generator:
        """The generator for this call (advances the call counter)."""
        self._generator.manual_seed(stream_seed(self.seed, self.salt, _rank(), _worker_id(), self.calls))
        self.calls += 1
        return self._generator

    def __getstate__(self) -> dict[str, Any]:  # torch.Generator pickles, but keep workers' copies fresh
        state = dict(self.__dict__)
        state["_generator"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._generator = torch.Generator()


def draw_mask(t: Tensor, maskable: Tensor, schedule: Any, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The forward process's mask (docs/method.md#noising, steps 3 and 4), the one
    implementation the ``noise`` stage, the held-out score and the study's teacher training
    share: ``p = 1 - alpha(t)`` ``[b]`` from the masking ``schedule`` and
    ``masked = (u < p) & maskable`` ``[b, L]``, with one ``u ~ U[0, 1)`` per token drawn
    from ``generator`` (after any draw the caller made) in ``t``'s dtype. ``masked`` lies
    on ``maskable``'s device."""
    p = torch.as_tensor(schedule.mask_prob(t), dtype=t.dtype)
    u = torch.rand(tuple(maskable.shape), generator=generator, dtype=t.dtype)
    return p, (u < p.unsqueeze(-1)).to(maskable.device) & maskable


def _check_mask_id(name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ValueError(f"{name} must be a non-negative int token id, got {value!r}")


@dataclass
class NoiseConfig:
    """Configuration of ``noise``.

    :param mask_id: student mask id ``m_S`` (required; see
        ``tide_plugin.alignment.resolve_mask_id``).
    :param teacher_mask_id: teacher mask id ``m_T`` (required for the shared and
        cross pipelines; defaults to ``mask_id`` in the same pipeline).
    :param schedule: masking schedule by registered name (``linear``, the default,
        ``cosine``, or a third party's).
    :param eps: lower bound of ``t ~ U[eps, 1)`` (docs/method.md#noising).
    :param ce_weighting: ``elbo`` (``w(t) = -alpha'(t)/(1-alpha(t)+1e-6)``) or ``uniform``.
    :param seed: seed of the stage's random stream.
    :param chunk_noise: how the ``cross`` pipeline masks chunks: ``unbiased`` (one
        draw per chunk; the default) or ``reference`` (the paper's per-token draw);
        the other pipelines ignore it.
    """

    mask_id: int | None = None
    teacher_mask_id: int | None = None
    schedule: str = "linear"
    eps: float = 1e-3
    ce_weighting: Literal["elbo", "uniform"] = "elbo"
    seed: int = 0
    chunk_noise: ChunkNoise = "unbiased"

    def __post_init__(self) -> None:
        if self.mask_id is None:
            raise ValueError(
                "noise needs mask_id (the student mask token id m_S); got None. "
                "Find it with tide_plugin.alignment.resolve_mask_id(tokenizer)"
            )
        _check_mask_id("mask_id", self.mask_id)
        _check_mask_id("teacher_mask_id", self.teacher_mask_id)
        from ..registry import get_registry

        get_registry().check_name("masking_schedule", self.schedule, "masking schedule")
        if not (isinstance(self.eps, (int, float)) and 0.0 <= float(self.eps) < 1.0):
            raise ValueError(f"eps must lie in [0, 1), got {self.eps!r}")
        if self.ce_weighting not in CE_WEIGHTINGS:
            raise ValueError(f"ce_weighting {self.ce_weighting!r} is not one of {CE_WEIGHTINGS}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if self.chunk_noise not in CHUNK_NOISE_RULES:
            raise ValueError(f"chunk_noise {self.chunk_noise!r} is not one of {CHUNK_NOISE_RULES}")


class Noise(SeededStage):
    """Noising stage: ``DistillBatch -> DistillBatch`` (fills the noise fields)."""

    stage_input = "batch"
    requires = frozenset({"padded"})
    provides = frozenset({"noised"})
    run_context = {
        "mask_id": "student_mask_id",
        "teacher_mask_id": "teacher_mask_id",
        "schedule": "masking_schedule",
        "eps": "time_epsilon",
        "ce_weighting": "ce_weighting",
        "seed": "seed",
        "chunk_noise": "chunk_noise",
    }
    """Configuration filled from the run (:class:`~tide_plugin.hookspecs.RunContext`)."""
    salt = 0x6E6F697365  # "noise"

    def __init__(self, config: NoiseConfig | None = None, **kwargs: Any) -> None:
        if config is not None and kwargs:
            raise TypeError("pass either a NoiseConfig or keyword configuration, not both")
        self.config = config if config is not None else NoiseConfig(**kwargs)
        from ..registry import get_masking_schedule

        self.scheduler = get_masking_schedule(self.config.schedule)
        self._init_rng(self.config.seed)

    def __repr__(self) -> str:
        return f"Noise({asdict(self.config)})"

    def teacher_mask_id(self, pipeline: str) -> int:
        m = self.config.teacher_mask_id
        if m is None:
            if not get_pipeline(pipeline).has_teacher_ids:
                return int(self.config.mask_id)
            raise ValueError(
                f"noise: the {pipeline!r} pipeline needs teacher_mask_id (the teacher's mask token id m_T, "
                "e.g. 156895 for LLaDA2.0-mini, 151665 for WeDLM); got None"
            )
        return int(m)

    def __call__(self, batch: DistillBatch, *, t: Tensor | None = None) -> DistillBatch:
        """Noise ``batch`` in place and return it. ``t`` ``[b]`` overrides the drawn
        timesteps (evaluation, tests)."""
        if not isinstance(batch, DistillBatch):
            raise TypeError(
                f"noise takes a DistillBatch from an earlier stage (distill_pad), got {type(batch).__name__}; "
                "put distill_pad first in the collator chain"
            )
        cfg = self.config
        g = self.next_generator()
        x0, labels = batch.input_ids, batch.labels
        b = x0.shape[0]
        dev = x0.device
        m_t = self.teacher_mask_id(batch.pipeline)
        if t is None:
            t = cfg.eps + (1.0 - cfg.eps) * torch.rand(b, generator=g)
        else:
            t = torch.as_tensor(t, dtype=torch.float32).reshape(-1)
            if t.numel() != b:
                raise ValueError(f"noise: t has {t.numel()} values for a batch of {b}")
            _ = torch.rand(b, generator=g)  # keep the stream aligned with the drawn case
        t = t.to(torch.float32)
        maskable = labels != IGNORE_INDEX
        p, masked = draw_mask(t, maskable, self.scheduler, g)

        strategy = get_pipeline(batch.pipeline)
        batch.chunk_active = None
        masked, teacher_masked = strategy.propagate_mask(
            batch, masked, maskable, mask_prob=p, generator=g, chunk_noise=cfg.chunk_noise
        )
        y0, _ = strategy.teacher_clean(batch)

        batch.t = t.to(dev)
        batch.masked = masked
        batch.noisy_input_ids = torch.where(masked, torch.full_like(x0, cfg.mask_id), x0)
        w = torch.ones_like(t) if cfg.ce_weighting == "uniform" else self.scheduler.elbo_weight(t)
        batch.ce_time_weight = torch.as_tensor(w, dtype=torch.float32).to(dev)
        batch.teacher_masked = teacher_masked
        batch.teacher_noisy_ids = torch.where(teacher_masked, torch.full_like(y0, m_t), y0).unsqueeze(0)
        batch.teacher_view_index = None
        batch.stats["masked_tokens"] = float(masked.sum())
        batch.stats["maskable_tokens"] = float(maskable.sum())
        batch.stats["teacher_masked_tokens"] = float(teacher_masked.sum())
        if batch.chunk_active is not None:
            batch.stats["active_chunks"] = float(batch.chunk_active.sum())
        return batch


@hookimpl
def tide_plugin_collators() -> list[PluginSpec]:
    return [
        PluginSpec(
            name="noise",
            factory=Noise,
            summary="forward diffusion: t ~ U[eps,1), mask by schedule, propagate the mask to the teacher",
            aliases=("mask",),
            config_cls=NoiseConfig,
        )
    ]
