"""One normalisation rule for every loss term (docs/method.md#normalisation, "(ours)").

Every term is a sum: CE's over its unit (:func:`~tide_plugin.bd3lm.ce_sum`) and every
objective part over the unit its objective declares (``unit``):

- ``masked_rows``: masked student positions (``batch.masked``);
- ``pairs``: template pairs that count (``pair_mask`` and the student position masked);
- ``active_chunks``: ``batch.chunk_active``;
- CE: ``maskable_tokens`` (``token`` normalisation) or ``sequences``.

The trainer divides each sum once (:func:`normalise`). In training, by the
per-micro-batch share of the window's count (:func:`window_denominators`): after the
Trainer divides each micro-batch loss by the accumulation steps and DDP averages over
ranks, the gradient is ``sum over the window / count over the window``, so N
micro-batches of b give the gradient of one batch of N*b, and k ranks of b that of one
rank of k*b. Outside training (evaluation, no window), and for the logged values, by
the micro-batch's own ``max(1, count)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..batch import DistillBatch
from ..hookspecs import UNITS
from ..objectives.base import unit_count as objective_unit_count

CE_UNITS = ("maskable_tokens", "sequences")
"""CE's units: ``token`` normalisation counts maskable tokens, ``sequence``/``batch`` count rows."""


def ce_unit(norm: str) -> str:
    """CE's unit under the loss normalisation ``norm`` (``token``, ``sequence``, ``batch``)."""
    return "maskable_tokens" if norm == "token" else "sequences"


def unit_count(batch: DistillBatch, unit: str) -> Tensor:
    """How many of ``unit`` the batch holds: a 0-dim long tensor on the batch's device."""
    if unit == "maskable_tokens":
        return (batch.labels != -100).sum()
    if unit == "sequences":
        # a fill on the device, not a copy from the host (which would wait for the device)
        return torch.full((), batch.batch_size, dtype=torch.long, device=batch.labels.device)
    if unit not in UNITS:
        raise ValueError(f"unit {unit!r} is not one of {UNITS + CE_UNITS}")
    return objective_unit_count(batch, unit)  # the objectives' own units: one definition


def part_units(objective: Any) -> dict[str, str]:
    """Part name -> unit. Read from ``objective.units`` when the objective offers that
    mapping, else from each component's ``unit`` (a part is named after its component)."""
    units = getattr(objective, "units", None)
    if units is None:
        components = getattr(objective, "components", None) or [objective]
        units = {c.name: getattr(c, "unit", None) for c in components}
    units = dict(units)
    for part, unit in units.items():
        if unit not in UNITS:
            raise ValueError(
                f"objective part {part!r} declares unit {unit!r}; an objective must set `unit` to one of {UNITS} "
                "(what its part is a sum over), so the trainer can normalise it over the accumulation window"
            )
    return units


def window_units(part_units: Mapping[str, str]) -> tuple[str, ...]:
    """The units counted per window: CE's, then those the parts use (sorted, so every rank agrees)."""
    return CE_UNITS + tuple(sorted(set(part_units.values())))


def count_units(batches: Sequence[DistillBatch], units: Sequence[str], device: torch.device) -> Tensor:
    """``[len(units)]`` long: each unit summed over ``batches``, on ``device`` (one copy,
    no host sync)."""
    total = torch.zeros(len(units), dtype=torch.long, device=device)
    for b in batches:
        total += torch.stack([unit_count(b, u).long() for u in units]).to(device, non_blocking=True)
    return total


def window_denominators(counts: Tensor, micro_batches: int, world_size: int) -> Tensor:
    """Per-micro-batch denominators ``[k]`` float32 from the window's counts ``[k]``
    (summed over micro-batches and ranks): the Trainer divides each micro-batch's loss by
    ``micro_batches`` and DDP averages over ``world_size`` ranks, so dividing each local
    sum by ``count / (micro_batches * world_size)`` makes the gradient ``sum / count``.
    ``max(1, count)``: a window without any unit has only zero parts; it contributes 0, not 0/0."""
    return counts.float().clamp_min(1.0) / float(max(micro_batches, 1) * max(world_size, 1))


def local_denominators(batch: DistillBatch, units: Sequence[str]) -> dict[str, Tensor]:
    """Each unit's ``max(1, count)`` in ``batch`` (float32, 0-dim): the micro-batch's own
    normalisation (evaluation, logged values)."""
    return {u: unit_count(batch, u).clamp_min(1).float() for u in units}


def normalise(sums: Mapping[str, Tensor], units: Mapping[str, str], denominators: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Every sum divided by its unit's denominator (:func:`window_denominators` in
    training, :func:`local_denominators` otherwise)."""
    out = {}
    for name, value in sums.items():
        unit = units.get(name)
        if unit is None:
            raise ValueError(f"the objective returned the part {name!r}, which it does not declare (declared: {sorted(units)})")
        out[name] = value / denominators[unit].to(device=value.device, dtype=value.dtype)
    return out
