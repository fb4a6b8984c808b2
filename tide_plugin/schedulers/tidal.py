"""The TIDAL distillation-strength schedule (SPEC 5.3), registered as ``tidal``.

``lambda_(progress, t)`` gives the interpolation weight ``[b]`` between the
student and the teacher; ``weight(t)`` gives the timestep weight ``omega(t)`` ``[b]``.
The math lives in :mod:`tide_plugin.objectives.functional`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..hookspecs import PluginSpec, hookimpl
from ..objectives.functional import AXES, DECAYS, TIMESTEP_WEIGHTS, Axis, Decay, TimestepWeight, tidal_lambda, timestep_weight


@dataclass(frozen=True)
class TidalScheduleConfig:
    """SPEC 5.3 defaults: ``l0 = 0.1``, ``l1 = 0.9``, cosine decay, both axes,
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
        if self.decay not in DECAYS:
            raise ValueError(f"decay {self.decay!r} is not one of {DECAYS}")
        if self.axis not in AXES:
            raise ValueError(f"axis {self.axis!r} is not one of {AXES}")
        if self.timestep_weight not in TIMESTEP_WEIGHTS:
            raise ValueError(f"timestep_weight {self.timestep_weight!r} is not one of {TIMESTEP_WEIGHTS}")


class TidalSchedule:
    """``lambda_(progress, t) -> [b]`` and ``weight(t) -> [b]`` (float32)."""

    name = "tidal"

    def __init__(self, **config) -> None:
        self.config = TidalScheduleConfig(**config)

    def lambda_(self, progress: float, t: Tensor) -> Tensor:
        """:param progress: ``global_step / max(max_steps, 1)`` in ``[0, 1]``. :param t: ``[b]``."""
        c = self.config
        return tidal_lambda(progress, t, lambda_init=c.lambda_init, lambda_max=c.lambda_max, decay=c.decay, axis=c.axis)

    def weight(self, t: Tensor) -> Tensor:
        """``omega(t)`` ``[b]``."""
        return timestep_weight(t, self.config.timestep_weight)

    def __repr__(self) -> str:
        return f"TidalSchedule({self.config})"


@hookimpl
def tide_plugin_schedulers() -> list[PluginSpec]:
    return [
        PluginSpec(
            name="tidal",
            factory=TidalSchedule,
            summary="TIDAL lambda over training progress and timestep, and timestep weight omega(t)",
            config_cls=TidalScheduleConfig,
        )
    ]
