"""Students compared on held-out bits per byte against a CE-only control, paired over the
same held-out sequences and noise draws (docs/method.md#sampling-and-evaluation): which
students a comparison trains, each one's difference to the control, and a verdict in words.
``tide distill --demo_arms`` trains the students; this module only reads their scores
(:class:`~tide_plugin.eval.heldout.BpbResult`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .heldout import paired_change

CONTROL = "none"
"""The comparison's name for the CE-only control (the registry's CE-only objective)."""
CONTROL_NAMES = frozenset({"none", "ce"})
VERDICT_SE = 2.0
"""A student beats (or falls behind) the control when the paired difference is at least
this many standard errors from zero."""


def comparison_arms(arms: str | Sequence[str] | None, objective: str) -> list[str]:
    """The students trained beside the run's own (``objective``) for the held-out
    comparison: the CE-only control first, then every other objective of ``arms``
    (comma-separated or a list; ``none``/``ce`` name the control), each once and none
    equal to ``objective``. Empty (no comparison) when ``arms`` is empty; any arm given
    brings the control, since every difference is taken against it."""
    if arms is None:
        return []
    items = [a.strip() for a in (arms.split(",") if isinstance(arms, str) else arms)]
    items = [a for a in items if a]
    if not items:
        return []
    out = [] if objective in CONTROL_NAMES else [CONTROL]
    for arm in items:
        name = CONTROL if arm in CONTROL_NAMES else arm
        if name != objective and name not in out:
            out.append(name)
    return out


def versus_control(control: Any, students: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{objective: {"bpb_after", "minus_ce", "minus_ce_se"}}``: each student's held-out
    bits per byte and its difference to the CE-only control's, paired over the same
    held-out sequences and noise draws (:func:`~tide_plugin.eval.heldout.paired_change`
    with the control as "before")."""
    out = {}
    for name, result in students.items():
        diff, se = paired_change(control, result)
        out[name] = {"bpb_after": result.bpb, "minus_ce": diff, "minus_ce_se": se}
    return out


def verdict(name: str, entry: Mapping[str, float]) -> str:
    """One line in words: ``name: 3.2410 bits/byte, 0.0123 ± 0.0021 below the CE-only
    control (5.9 s.e.): beats it``."""
    diff, se = entry["minus_ce"], entry["minus_ce_se"]
    head = f"{name}: {entry['bpb_after']:.4f} bits/byte, "
    if diff == 0.0:
        return head + "identical to the CE-only control"
    where = "below" if diff < 0 else "above"
    z = abs(diff) / se if se > 0 else math.inf
    words = "no clear difference" if z < VERDICT_SE else ("beats it" if diff < 0 else "worse than it")
    return head + f"{abs(diff):.4f} ± {se:.4f} {where} the CE-only control ({z:.1f} s.e.): {words}"
