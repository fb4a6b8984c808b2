"""TIDAL: dual-axis interpolation between student and teacher (docs/method.md#tidal).

Registered names:

- ``tidal`` (aliases ``taid``; ``taid_aligned`` presets ``aligned=True``): token TIDAL,
  target ``R = stopgrad(softmax(((1-lam) z_S + lam z_T) / tau))`` on the shared
  vocabulary, loss ``sum_i omega(t_i) KL(R_i || softmax(z_S,i / tau)) * tau^2``
  summed over masked positions (or template pairs when aligned);
- ``tidal_calm`` (alias ``alm_taid``): chunk TIDAL, target
  ``m = stopgrad(clamp((1-lam) s + lam q))``, loss ``-(m log s + (1-m) log(1-s)) omega(t)``
  summed over active chunks; ``reverse=True`` (alias
  ``reverse_alm_taid``, the reference mode) ``-(s log m + (1-s) log(1-m)) omega(t)``, with
  the docs/method.md#tidal warning (TIDAL pairs with forward objectives).

``lam`` ``[b]`` and ``omega(t)`` ``[b]`` come from the strength schedule selected by
name (``schedule``, default ``tidal``: its fields ``lambda_init``, ``lambda_max``,
``decay``, ``axis``, ``timestep_weight`` are passed through as keywords or in
``schedule_config``), with ``progress = inputs.progress`` and ``t = batch.t``.
TIDAL pairs with forward objectives (docs/method.md#tidal).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..batch import DistillInputs
from ..hookspecs import PluginSpec, Requirement, Unit, hookimpl
from ..registry import get_strength_schedule
from .base import Objective, check_temperature_weight
from .calm import active_chunk_log_probs
from .functional import tidal_calm
from .functional import token_divergence
from .kl import token_rows


@dataclass(frozen=True, init=False)
class TidalConfig:
    """Token TIDAL's configuration.

    :param schedule: the strength schedule, by registered name (``tidal``).
    :param schedule_config: its configuration; keywords this class does not know
        are added to it, so ``TidalConfig(decay="linear")`` configures the schedule.
        The schedule validates them when the objective builds it.
    :param temperature: tau (2.0). :param weight: multiplies the part.
    :param aligned: read template pairs (the ``taid_aligned`` alias).
    """

    schedule: str
    schedule_config: Mapping[str, Any]
    temperature: float
    weight: float
    aligned: bool

    def __init__(
        self,
        schedule: str = "tidal",
        schedule_config: Mapping[str, Any] | None = None,
        temperature: float = 2.0,
        weight: float = 1.0,
        aligned: bool = False,
        **schedule_kwargs: Any,
    ) -> None:
        merged = dict(schedule_config or {})
        both = sorted(set(merged) & set(schedule_kwargs))
        if both:
            raise ValueError(f"{both} given both as keywords and in schedule_config")
        merged.update(schedule_kwargs)
        for name, value in (("schedule", schedule), ("schedule_config", merged), ("temperature", temperature),
                            ("weight", weight), ("aligned", aligned)):
            object.__setattr__(self, name, value)
        self.__post_init__()

    def __post_init__(self) -> None:
        check_temperature_weight(self.temperature, self.weight)
        if not isinstance(self.aligned, bool):
            raise ValueError(f"aligned must be True or False, got {self.aligned!r}")
        if not isinstance(self.schedule, str) or not self.schedule:
            raise ValueError(f"schedule must be a strength schedule's registered name, got {self.schedule!r}")

    @classmethod
    def option_names(cls, config: Mapping[str, Any]) -> list[str]:
        """This class's fields and the options of the strength schedule that
        ``config`` names (the registry's unknown-option check reads them)."""
        from ..registry import accepted_options, get_registry

        own = [f.name for f in dataclasses.fields(cls)]
        name = config.get("schedule", "tidal")
        try:
            spec = get_registry().resolve("strength_schedule", name).spec
        except (KeyError, ValueError):  # an unknown schedule is reported when it is built
            return own
        return own + (accepted_options(spec) or [])

    @property
    def requirements(self) -> frozenset[Requirement]:
        return frozenset({"pairs" if self.aligned else "token_alignment", "timestep", "progress"})

    @property
    def unit(self) -> Unit:
        return "pairs" if self.aligned else "masked_rows"


@dataclass(frozen=True, init=False)
class TidalCalmConfig(TidalConfig):
    """Chunk TIDAL has no ``aligned`` mode (chunks are the alignment); ``reverse`` swaps
    target and prediction (the reference's ``reverse_alm_taid``)."""

    reverse: bool

    def __init__(self, *args: Any, reverse: bool = False, **kwargs: Any) -> None:
        object.__setattr__(self, "reverse", reverse)  # before TidalConfig validates
        super().__init__(*args, **kwargs)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.reverse, bool):
            raise ValueError(f"reverse must be True or False, got {self.reverse!r}")
        if self.aligned:
            raise ValueError("tidal_calm works on chunks; aligned=True applies to token TIDAL ('tidal') only")

    @property
    def requirements(self) -> frozenset[Requirement]:
        return frozenset({"chunks", "timestep", "progress"})

    @property
    def unit(self) -> Unit:
        return "active_chunks"


class _TidalBase(Objective):
    config_cls: type[TidalConfig] = TidalConfig
    interpolates_teacher = True
    supports_projected_logits = True

    def __init__(self, **config) -> None:
        self.config = self.config_cls(**config)
        self.schedule = get_strength_schedule(self.config.schedule, **self.config.schedule_config)

    def lambda_and_weight(self, inputs: DistillInputs) -> tuple[Tensor, Tensor]:
        """``lam`` ``[b]`` and ``omega(t)`` ``[b]`` on the logits' device."""
        t = inputs.batch.t
        if t is None:
            raise ValueError(f"objective {self.name!r} needs the diffusion timestep batch.t; put 'noise' in the chain")
        device = inputs.student_logits.device
        lam = self.schedule.lambda_(inputs.progress, t).to(device)
        return lam, self.schedule.weight(t).to(device)

    def metrics(self, inputs: DistillInputs) -> dict[str, Tensor]:
        """``lambda/<name>``: the batch's mean interpolation weight."""
        if inputs.batch.t is None:
            return {}
        return {f"lambda/{self.name}": self.schedule.lambda_(inputs.progress, inputs.batch.t).float().mean().detach()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config}, {self.schedule!r})"


class TokenTidal(_TidalBase):
    """Token TIDAL. Student logits ``[b, L, V_S]``, teacher logits ``[b, L_T, V_T]``."""

    name = "tidal"
    aligned_alias = "taid_aligned"

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        b_idx, s_pos, t_pos = token_rows(inputs, self.config.aligned, self.name, self.aligned_alias)
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
            reduction="sum",
        )
        return {self.name: loss}


class ChunkTidal(_TidalBase):
    """Chunk TIDAL over the active chunks (chunk log-probs shared through ``inputs.cache``)."""

    name = "tidal_calm"
    config_cls = TidalCalmConfig

    def __init__(self, **config) -> None:
        super().__init__(**config)
        self.direction = "reverse" if self.config.reverse else "forward"
        if self.config.reverse:
            warnings.warn(
                "reverse chunk TIDAL (reverse_alm_taid): TIDAL pairs with forward objectives only (docs/method.md#tidal); "
                "late in training its (1 - lambda) factor suppresses the self-selection of the reverse direction",
                UserWarning,
                stacklevel=3,
            )

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        lp_s, lp_t, active = active_chunk_log_probs(inputs, self.name)
        lam, w = self.lambda_and_weight(inputs)
        loss = tidal_calm(
            lp_s, lp_t, active, lam, weight=w, temperature=self.config.temperature, reverse=self.config.reverse,
            reduction="sum",
        )
        return {self.name: loss}


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
            aliases=("alm_taid", "reverse_alm_taid"),
            alias_config={"reverse_alm_taid": {"reverse": True}},
            config_cls=TidalCalmConfig,
        ),
    ]
