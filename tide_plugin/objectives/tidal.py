"""TIDAL: dual-axis interpolation between student and teacher (SPEC 5.3).

Registered names:

- ``tidal`` (aliases ``taid``; ``taid_aligned`` presets ``aligned=True``): token TIDAL,
  target ``R = stopgrad(softmax(((1-lam) z_S + lam z_T) / tau))`` on the shared
  vocabulary, loss ``sum_i omega(t_i) KL(R_i || softmax(z_S,i / tau)) / N_masked * tau^2``
  over masked positions (or template pairs when aligned);
- ``tidal_calm`` (alias ``alm_taid``): chunk TIDAL, target
  ``m = stopgrad(clamp((1-lam) s + lam q))``, loss ``-(m log s + (1-m) log(1-s)) omega(t)``
  summed over active chunks, divided by their count.

``lam`` ``[b]`` and ``omega(t)`` ``[b]`` come from the ``tidal`` scheduler with
``progress = inputs.progress`` and ``t = batch.t``. TIDAL pairs with forward
objectives (SPEC 5.3).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..batch import DistillInputs
from ..hookspecs import PluginSpec, hookimpl
from ..schedulers.tidal import TidalSchedule, TidalScheduleConfig
from .base import Objective
from .calm import active_chunk_log_probs
from .functional import Axis, Decay, TimestepWeight, tidal_calm
from .fused_token import token_divergence
from .kl import check_temperature_weight, token_rows


@dataclass(frozen=True)
class TidalConfig:
    """Schedule (SPEC 5.3 defaults) plus ``temperature``, ``weight`` and, for token
    TIDAL, ``aligned`` (template pairs; the ``taid_aligned`` alias)."""

    lambda_init: float = 0.1
    lambda_max: float = 0.9
    decay: Decay = "cosine"
    axis: Axis = "both"
    timestep_weight: TimestepWeight = "uniform"
    temperature: float = 2.0
    weight: float = 1.0
    aligned: bool = False

    def __post_init__(self) -> None:
        check_temperature_weight(self.temperature, self.weight)
        if not isinstance(self.aligned, bool):
            raise ValueError(f"aligned must be True or False, got {self.aligned!r}")
        self.schedule_config()  # validates the schedule fields

    def schedule_config(self) -> TidalScheduleConfig:
        return TidalScheduleConfig(
            lambda_init=self.lambda_init,
            lambda_max=self.lambda_max,
            decay=self.decay,
            axis=self.axis,
            timestep_weight=self.timestep_weight,
        )


@dataclass(frozen=True)
class TidalCalmConfig(TidalConfig):
    """Chunk TIDAL has no ``aligned`` mode (chunks are the alignment)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.aligned:
            raise ValueError("tidal_calm works on chunks; aligned=True applies to token TIDAL ('tidal') only")


class _TidalBase(Objective):
    config_cls: type[TidalConfig] = TidalConfig
    interpolates_teacher = True
    supports_projected_logits = True

    def __init__(self, **config) -> None:
        self.config = self.config_cls(**config)
        self.weight = self.config.weight
        sc = self.config.schedule_config()
        self.schedule = TidalSchedule(
            lambda_init=sc.lambda_init, lambda_max=sc.lambda_max, decay=sc.decay, axis=sc.axis,
            timestep_weight=sc.timestep_weight,
        )

    def lambda_and_weight(self, inputs: DistillInputs) -> tuple[Tensor, Tensor]:
        """``lam`` ``[b]`` and ``omega(t)`` ``[b]`` on the logits' device."""
        t = inputs.batch.t
        if t is None:
            raise ValueError(f"objective {self.name!r} needs the diffusion timestep batch.t; put 'noise' in the chain")
        device = inputs.student_logits.device
        lam = self.schedule.lambda_(inputs.progress, t).to(device)
        return lam, self.schedule.weight(t).to(device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


class TokenTidal(_TidalBase):
    """Token TIDAL. Student logits ``[b, L, V_S]``, teacher logits ``[b, L_T, V_T]``."""

    name = "tidal"

    def __init__(self, **config) -> None:
        super().__init__(**config)
        align = "pairs" if self.config.aligned else "token_alignment"
        self.requires = frozenset({align, "timestep", "progress"})

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        b_idx, s_pos, t_pos = token_rows(inputs, self.config.aligned, self.name)
        lam, w = self.lambda_and_weight(inputs)
        loss = token_divergence(
            inputs.student_logits,
            inputs.teacher_logits,
            b_idx,
            s_pos,
            t_pos,
            mode="tidal",
            temperature=self.config.temperature,
            shared_vocab_size=inputs.shared_vocab_size,
            lam=lam,
            weight=w,
        )
        return {self.name: loss}


class ChunkTidal(_TidalBase):
    """Chunk TIDAL over the active chunks (chunk log-probs shared through ``inputs.cache``)."""

    name = "tidal_calm"
    config_cls = TidalCalmConfig
    requires = frozenset({"chunks", "timestep", "progress"})

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        lp_s, lp_t, active = active_chunk_log_probs(inputs, self.name)
        lam, w = self.lambda_and_weight(inputs)
        return {self.name: tidal_calm(lp_s, lp_t, active, lam, weight=w, temperature=self.config.temperature)}


@hookimpl
def tide_plugin_objectives() -> list[PluginSpec]:
    return [
        PluginSpec(
            name="tidal",
            factory=TokenTidal,
            summary="token TIDAL: KL(stopgrad(mix of student and teacher) || student), lambda over progress and t",
            aliases=("taid", "taid_aligned"),
            alias_config={"taid_aligned": {"aligned": True}},
            config_cls=TidalConfig,
        ),
        PluginSpec(
            name="tidal_calm",
            factory=ChunkTidal,
            summary="chunk TIDAL: CALM towards stopgrad((1-lambda) s + lambda q) over active chunks",
            aliases=("alm_taid",),
            config_cls=TidalCalmConfig,
        ),
    ]
