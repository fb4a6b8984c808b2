"""``tide distill``'s comparison students (``--demo_arms``): besides the run's own student,
a CE-only control and any other objectives, each trained from the same init with the
same seed, data order, noise draws and settings, and scored on the same held-out
sequences. They are not saved: their held-out numbers and curves go into the run's
``metrics.json`` and ``loss.png``.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..training import DistillConfig
from ..training.plan import RunPlan, plan_run

CONTROL_LABEL = "CE only (control)"


def check_arms(config: DistillConfig, arms: Sequence[str]) -> dict[str, RunPlan]:
    """Every arm's plan (before any model work): its objective registered, built and
    checked against the run's pipeline; the control's too (``none``, CE only)."""
    from ..objectives.base import PipelineMismatchError

    plans = {}
    for arm in arms:
        try:
            plans[arm] = plan_run(arm_config(config, arm))
        except PipelineMismatchError as exc:
            raise ValueError(f"--demo_arms {arm!r} cannot train beside this run: {exc}") from exc
    return plans


def arm_config(config: DistillConfig, objective: str, output_dir: str | None = None) -> DistillConfig:
    """The run's config for another objective: everything the same (seed, data order,
    noise, schedule, pipeline) but the objective, its entries of ``objective_config``,
    and no checkpoints."""
    from transformers.trainer_utils import SaveStrategy

    from ..registry import get_registry

    reg = get_registry()
    cfg = copy.deepcopy(config)
    cfg.objective = objective
    names = {reg.resolve("objective", p).name for p in objective.split("+")} if objective_registered(objective) else set()
    cfg.objective_config = {k: v for k, v in config.objective_config.items()
                            if objective_registered(k) and reg.resolve("objective", k).name in names}
    cfg.save_strategy = SaveStrategy("no")
    if output_dir is not None:
        cfg.output_dir = output_dir
    return cfg


def objective_registered(name: str) -> bool:
    """Whether every ``+`` component of ``name`` is a registered objective (or alias)."""
    from ..registry import UnknownPluginError, get_registry

    reg = get_registry()
    try:
        for part in name.split("+"):
            reg.resolve("objective", part)
    except UnknownPluginError:
        return False
    return True


def train_arms(
    arms: Sequence[str],
    config: DistillConfig,
    *,
    init: torch.nn.Module,
    build: Callable[[DistillConfig, torch.nn.Module], Any],
    train: Callable[[Any, str], tuple[Any, list]],
    say: Callable[[str], None],
) -> dict[str, tuple[Any, list]]:
    """Train each arm on a copy of ``init``; returns ``{arm: (held-out result, curve)}``.

    :param build: ``build(config, student) -> trainer`` (the run's teacher, data and tokenizers).
    :param train: ``train(trainer, label) -> (held-out result, curve)``.
    """
    from ..eval.comparison import CONTROL

    out: dict[str, tuple[Any, list]] = {}
    for k, arm in enumerate(arms, 1):
        label = CONTROL_LABEL if arm == CONTROL else arm
        say(f"comparison student {k}/{len(arms)}: {label}, from the same init, data order and noise")
        with tempfile.TemporaryDirectory(prefix="tide-arm-") as tmp:
            # the control is the CE-only objective `none`: the same batches and noise, no teacher
            trainer = build(arm_config(config, arm, output_dir=tmp), copy.deepcopy(init))
            out[arm] = train(trainer, label)
    return out


def curves_by_label(main: str, main_curve: list, arms: Mapping[str, tuple[Any, list]]) -> dict[str, list]:
    """Held-out curves for ``loss.png``: the run's own student first, then each arm."""
    from ..eval.comparison import CONTROL

    curves = {main: main_curve}
    for arm, (_, curve) in arms.items():
        curves[CONTROL_LABEL if arm == CONTROL else arm] = curve
    return curves
