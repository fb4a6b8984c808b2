"""One normalisation rule for every loss term (docs/method.md#normalisation, "(ours)").

CE and every objective part are sums over the whole gradient-accumulation window and
all ranks divided by that window's count of the term's units, so that N micro-batches
of b give the gradient of one batch of N*b, and k ranks of b that of one rank of k*b.

An objective declares what its part is a mean over with the attribute ``unit``:

- ``masked_rows``: masked student positions (``batch.masked``);
- ``pairs``: template pairs that count (``pair_mask`` and the student position masked);
- ``active_chunks``: ``batch.chunk_active``.

The objective returns the mean over its micro-batch's own units (``sum / max(1, n)``);
:func:`window_normalised` turns it into ``sum / D``, where ``D`` is the per-micro-batch
share of the window's count (:func:`window_denominators`): after the Trainer divides
each micro-batch loss by the accumulation steps and DDP averages over ranks, the
gradient is ``sum over the window / count over the window``.
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
                "(what its part is a mean over), so the trainer can normalise it over the accumulation window"
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


def window_normalised(mean: Tensor, local_count: Tensor, denominator: Tensor) -> Tensor:
    """A part that is a mean over this micro-batch's ``local_count`` units, as its sum over
    them divided by the window's ``denominator``. ``max(1, local_count)`` undoes the
    objective's own ``max(1, .)`` (no unit: the part is 0 and stays 0, with a zero gradient)."""
    scale = local_count.clamp_min(1).to(torch.float32) / denominator
    return mean * scale.to(mean.dtype)


def normalise_parts(
    parts: Mapping[str, Tensor], batch: DistillBatch, units: Mapping[str, str], window: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Every part (a mean over the micro-batch's units) renormalised over the window."""
    out = {}
    for name, value in parts.items():
        unit = units.get(name)
        if unit is None:
            raise ValueError(f"the objective returned the part {name!r}, which it does not declare (declared: {sorted(units)})")
        out[name] = window_normalised(value, unit_count(batch, unit).to(value.device), window[unit])
    return out
