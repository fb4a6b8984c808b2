"""dllm's alpha schedulers as our masking schedules (``docs/method.md#noising``).

dllm's ``BD3LMTrainer`` masks with an alpha scheduler (``scheduler=`` an instance
of ``dllm.core.schedulers.BaseAlphaScheduler``, default ``LinearAlphaScheduler``):
``p_mask = 1 - alpha(t)`` and the ELBO weight ``-alpha'(t) / (1 - alpha(t) + 1e-6)``.
:class:`DllmAlphaSchedule` is that scheduler behind our
:class:`~tide_plugin.hookspecs.MaskingScheduleProtocol`: ``alpha`` and
``alpha_prime`` are the scheduler's own calls, ``mask_prob`` is ``1 - alpha(t)``
as dllm computes it, so the ``noise`` stage masks and weighs exactly as dllm's
trainer would with it.

Where dllm is installed, every alpha scheduler it defines is registered here as a
masking schedule: ``dllm_linear`` (aliases ``LinearAlphaScheduler``,
``linearalphascheduler``), ``dllm_cosine``, ... Listing them reads dllm's scheduler
module alone (importing dllm takes seconds); building one imports dllm.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..hookspecs import PluginSpec, hookimpl
from ..schedulers.masking import MaskingSchedule

SCHEDULERS_MODULE = "dllm.core.schedulers.alpha"


def _as_time(t: Tensor | float) -> Tensor:
    if not isinstance(t, Tensor):
        return torch.tensor(float(t), dtype=torch.float32)
    return t


class DllmAlphaSchedule(MaskingSchedule):
    """A dllm alpha scheduler instance as a masking schedule (exact: its ``alpha(t)``
    and ``alpha_derivative(t)``; dllm computes them in float32)."""

    def __init__(self, scheduler: Any) -> None:
        for method in ("alpha", "alpha_derivative"):
            if not callable(getattr(scheduler, method, None)):
                raise TypeError(
                    f"scheduler {scheduler!r} is not a dllm alpha scheduler (it has no {method}(t)); "
                    "pass a dllm.core.schedulers.BaseAlphaScheduler or a registered masking schedule name"
                )
        super().__init__()
        self.scheduler = scheduler
        self.name = registry_name(type(scheduler).__name__)

    def alpha(self, t: Tensor | float) -> Tensor:
        return torch.as_tensor(self.scheduler.alpha(_as_time(t)))

    def mask_prob(self, t: Tensor | float) -> Tensor:
        return 1.0 - self.alpha(t)  # dllm's p_mask

    def alpha_prime(self, t: Tensor | float) -> Tensor:
        return torch.as_tensor(self.scheduler.alpha_derivative(_as_time(t)))

    def __repr__(self) -> str:
        return f"DllmAlphaSchedule({self.scheduler!r})"


def registry_name(class_name: str) -> str:
    """``CosineAlphaScheduler`` -> ``dllm_cosine`` (our snake_case name of a dllm scheduler)."""
    stem = re.sub(r"(Alpha)?Scheduler$", "", class_name) or class_name
    return "dllm_" + re.sub(r"(?<!^)(?=[A-Z])", "_", stem).lower()


def as_masking_schedule(scheduler: Any) -> DllmAlphaSchedule:
    """A dllm scheduler instance, or a dllm scheduler name (``CosineAlphaScheduler``,
    ``cosinealphascheduler``, ``dllm_cosine``), as a masking schedule. Needs dllm."""
    if isinstance(scheduler, str):
        from dllm.core.schedulers import make_alpha_scheduler

        classes = {registry_name(n): n for n in dllm_scheduler_names()}
        scheduler = make_alpha_scheduler(classes.get(scheduler, scheduler))
    return DllmAlphaSchedule(scheduler)


def dllm_scheduler_names() -> list[str]:
    """Class names of dllm's alpha schedulers (subclasses of ``BaseAlphaScheduler``),
    from the imported dllm, else from its scheduler module read alone; ``[]`` without dllm."""
    module = sys.modules.get(SCHEDULERS_MODULE)
    if module is None:
        module = _read_alone()
    if module is None:
        return []
    base = module.BaseAlphaScheduler
    return sorted({cls.__name__ for cls in base.__registry__.values() if cls is not base})


def _read_alone() -> Any:
    try:
        spec = importlib.util.find_spec("dllm")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "core" / "schedulers" / "alpha.py"
    if not path.is_file():
        return None
    alone = importlib.util.spec_from_file_location("_tide_dllm_alpha_listing", path)
    module = importlib.util.module_from_spec(alone)
    sys.modules[alone.name] = module  # dataclasses look their module up while the file runs
    try:
        alone.loader.exec_module(module)
    finally:
        sys.modules.pop(alone.name, None)
    return module


def _factory(class_name: str) -> Any:
    def build(**config: Any) -> DllmAlphaSchedule:
        from dllm.core.schedulers import make_alpha_scheduler

        return DllmAlphaSchedule(make_alpha_scheduler(class_name, **config))

    build.__name__ = f"build_{registry_name(class_name)}"
    return build


@hookimpl
def tide_plugin_masking_schedules() -> list[PluginSpec]:
    try:
        names = dllm_scheduler_names()
    except Exception:  # a dllm tree this code does not know: list nothing rather than fail loading
        return []
    return [
        PluginSpec(
            name=registry_name(n),
            factory=_factory(n),
            summary=f"dllm's {n} (dllm.core.schedulers), exact alpha(t) and alpha'(t)",
            aliases=(n, n.lower()),
        )
        for n in names
    ]


def drive_noise(collator: Any, scheduler: Any, config: Any = None) -> DllmAlphaSchedule:
    """Make ``scheduler`` (a dllm alpha scheduler, or its name) the masking schedule of
    every stage of ``collator``'s chain that masks by one (the ``noise`` stage), and
    record its name in ``config.masking_schedule``. Refuses, in one line, a chain with
    no such stage and a ``config.masking_schedule`` other than the default that names
    another schedule: a scheduler is never stored and ignored."""
    from ..hookspecs import MaskingScheduleProtocol
    from ..registry import UnknownPluginError, get_registry

    schedule = scheduler if isinstance(scheduler, DllmAlphaSchedule) else as_masking_schedule(scheduler)
    stages = [s for s in getattr(getattr(collator, "chain", None), "stages", ())
              if isinstance(getattr(s, "scheduler", None), MaskingScheduleProtocol)]
    if not stages:
        raise ValueError(
            f"scheduler {schedule.scheduler!r} cannot drive the masking: the collator chain has no stage that masks "
            "by a schedule (put 'noise' in it)"
        )
    reg = get_registry()
    try:
        registered = reg.resolve("masking_schedule", schedule.name).name
    except UnknownPluginError:
        registered = None
    given = getattr(config, "masking_schedule", None)
    if given not in (None, "linear", registered, schedule.name):
        raise ValueError(
            f"scheduler {schedule.scheduler!r} and masking_schedule {given!r} disagree; give one of them"
        )
    for stage in stages:
        stage.scheduler = schedule
        if registered is not None and hasattr(getattr(stage, "config", None), "schedule"):
            stage.config.schedule = registered
    if config is not None:
        config.masking_schedule = registered or schedule.name
    return schedule


def dllm_scheduler_of(collator: Any) -> Any:
    """The dllm scheduler equal to the schedule the chain's ``noise`` stage masks by
    (dllm's own where it is one; ``LinearAlphaScheduler`` / ``CosineAlphaScheduler`` for
    ``linear`` / ``cosine``, the same ``alpha(t)``), or ``None``. Needs dllm."""
    from dllm.core.schedulers import make_alpha_scheduler

    for stage in getattr(getattr(collator, "chain", None), "stages", ()):
        schedule = getattr(stage, "scheduler", None)
        if isinstance(schedule, DllmAlphaSchedule):
            return schedule.scheduler
        name = getattr(schedule, "name", None)
        if name in EQUIVALENT:
            return make_alpha_scheduler(EQUIVALENT[name])
    return None


EQUIVALENT = {"linear": "LinearAlphaScheduler", "cosine": "CosineAlphaScheduler"}
"""Our built-in schedules and the dllm schedulers with the same ``alpha(t)``."""
