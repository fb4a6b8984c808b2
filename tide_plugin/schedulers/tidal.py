"""The TIDAL distillation-strength schedule (docs/method.md#tidal), registered as the
strength schedule ``tidal``.

``lambda_train = l0 + (l1 - l0) g(p)`` with ``g`` cosine ``(1 - cos(pi p)) / 2`` or
linear ``p`` over training progress ``p = global_step / max_steps``; per example

- ``both``: ``lambda = lambda_train (1 - t)``;
- ``training_only``: ``lambda = lambda_train``;
- ``timestep_only``: ``lambda = l1 (1 - t)``.

Timestep weight ``omega(t)``: ``uniform`` 1, or ``midrange``
``exp(-(t - 0.5)^2 / (2 * 0.15^2))``. The five fields are defined and validated
once, by :class:`TidalScheduleConfig`; objectives select this schedule by name
(``schedule="tidal"``) and pass the fields through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..hookspecs import PluginSpec, hookimpl

Decay = Literal["cosine", "linear"]
Axis = Literal["both", "training_only", "timestep_only"]
TimestepWeight = Literal["uniform", "midrange"]
DECAYS: tuple[str, ...] = ("cosine", "linear")
AXES: tuple[str, ...] = ("both", "training_only", "timestep_only")
TIMESTEP_WEIGHTS: tuple[str, ...] = ("uniform", "midrange")
MIDRANGE_SIGMA = 0.15
"""Width of the ``midrange`` timestep weight (docs/method.md#tidal)."""


@dataclass(frozen=True)
class TidalScheduleConfig:
    """docs/method.md#tidal defaults: ``l0 = 0.1``, ``l1 = 0.9``, cosine decay, both axes,
    uniform timestep weight (the native recipe uses ``midrange``)."""

    lambda_init: float = 0.1
    lambda_max: float = 0.9
    decay: Decay = "cosine"
    axis: Axis = "both"
    timestep_weight: TimestepWeight = "uniform"

    def __post_init__(self) -> None:
        for name in ("lambda_init", "lambda_max"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], got {v!r}")
        for name, allowed in (("decay", DECAYS), ("axis", AXES), ("timestep_weight", TIMESTEP_WEIGHTS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {allowed}")


def _as_timesteps(t: Tensor | float) -> Tensor:
    if not isinstance(t, Tensor):
        t = torch.tensor([float(t)])
    if t.dim() != 1:
        raise ValueError(f"t must have shape [b], got {list(t.shape)}")
    return t.detach().float()


def _lambda(config: TidalScheduleConfig, progress: float | Tensor, t: Tensor) -> Tensor:
    p = float(progress)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"progress must be in [0, 1] (global_step / max_steps), got {p!r}")
    t = _as_timesteps(t)
    g = (1.0 - math.cos(math.pi * p)) / 2.0 if config.decay == "cosine" else p
    lam_train = config.lambda_init + (config.lambda_max - config.lambda_init) * g
    if config.axis == "both":
        return lam_train * (1.0 - t)
    if config.axis == "training_only":
        return torch.full_like(t, lam_train)
    return config.lambda_max * (1.0 - t)


def _omega(config: TidalScheduleConfig, t: Tensor | float) -> Tensor:
    t = _as_timesteps(t)
    if config.timestep_weight == "uniform":
        return torch.ones_like(t)
    return torch.exp(-((t - 0.5) ** 2) / (2.0 * MIDRANGE_SIGMA**2))


def tidal_lambda(
    progress: float | Tensor,
    t: Tensor,
    *,
    lambda_init: float = 0.1,
    lambda_max: float = 0.9,
    decay: Decay = "cosine",
    axis: Axis = "both",
) -> Tensor:
    """TIDAL interpolation weight per example (docs/method.md#tidal).

    :param progress: ``global_step / max(max_steps, 1)`` in ``[0, 1]``.
    :param t: ``[b]`` diffusion timesteps.
    :return: ``[b]`` float32.
    """
    config = TidalScheduleConfig(lambda_init=lambda_init, lambda_max=lambda_max, decay=decay, axis=axis)
    return _lambda(config, progress, t)


def timestep_weight(t: Tensor, kind: TimestepWeight = "uniform") -> Tensor:
    """``omega(t)`` per example (docs/method.md#tidal). :param t: ``[b]``. :return: ``[b]`` float32."""
    return _omega(TidalScheduleConfig(timestep_weight=kind), t)


class TidalSchedule:
    """``lambda_(progress, t) -> [b]`` and ``weight(t) -> [b]`` (float32)."""

    name = "tidal"

    def __init__(self, **config) -> None:
        self.config = TidalScheduleConfig(**config)

    def lambda_(self, progress: float, t: Tensor) -> Tensor:
        """:param progress: ``global_step / max(max_steps, 1)`` in ``[0, 1]``. :param t: ``[b]``."""
        return _lambda(self.config, progress, t)

    def weight(self, t: Tensor) -> Tensor:
        """``omega(t)`` ``[b]``."""
        return _omega(self.config, t)

    def __repr__(self) -> str:
        return f"TidalSchedule({self.config})"


@hookimpl
def tide_plugin_strength_schedules() -> list[PluginSpec]:
    return [
        PluginSpec(
            name="tidal",
            factory=TidalSchedule,
            summary="TIDAL lambda over training progress and timestep, and timestep weight omega(t)",
            config_cls=TidalScheduleConfig,
        )
    ]
