"""tide-plugin: TIDE cross-architecture distillation for diffusion LLMs as named plugins.

Public API::

    import tide_plugin
    tide_plugin.get_objective("reverse_calm", temperature=2.0)
    tide_plugin.get_objective("tidal_calm+calm")          # composition over one forward
    tide_plugin.available("objective")                    # name -> PluginInfo

Everything a plugin author needs is exported here: the hook markers and
:class:`PluginSpec`, the protocols of what each kind builds, the objective base
class and its helpers, the batch structures an objective reads, and the masking
schedule base class. The registry reads entry points on first use, never at
import; the names that need torch are imported when first used.
"""

from typing import TYPE_CHECKING, Any

from .hookspecs import (
    KINDS,
    REQUIREMENTS,
    UNITS,
    CollatorStageProtocol,
    MaskingScheduleProtocol,
    ObjectiveConfigProtocol,
    ObjectiveProtocol,
    PluginKind,
    PluginSpec,
    Requirement,
    ResumableStageProtocol,
    RunContext,
    StrengthScheduleProtocol,
    TeacherProtocol,
    Unit,
    hookimpl,
    hookspec,
)
from .registry import (
    DuplicatePluginError,
    PluginContractError,
    PluginError,
    PluginInfo,
    PluginLoadWarning,
    UnknownOptionError,
    UnknownPluginError,
    available,
    get_collator,
    get_masking_schedule,
    get_objective,
    get_registry,
    get_strength_schedule,
    get_teacher,
    objective_requirements,
)

# The names below need torch: they are imported on first access, so that
# `import tide_plugin` (and the `tide` command's start) stays light.
_LAZY: dict[str, str] = {
    "DistillBatch": "tide_plugin.batch",
    "DistillInputs": "tide_plugin.batch",
    "PipelineInfo": "tide_plugin.batch",
    "ComposedObjective": "tide_plugin.objectives.base",
    "Objective": "tide_plugin.objectives.base",
    "PipelineMismatchError": "tide_plugin.objectives.base",
    "check_requirements": "tide_plugin.objectives.base",
    "check_temperature_weight": "tide_plugin.objectives.base",
    "unit_count": "tide_plugin.objectives.base",
    "active_chunk_log_probs": "tide_plugin.objectives.calm",
    "token_rows": "tide_plugin.objectives.kl",
    "MaskingSchedule": "tide_plugin.schedulers.masking",
    "TeacherAdapter": "tide_plugin.teachers.base",
    "TeacherConfig": "tide_plugin.teachers.base",
}

if TYPE_CHECKING:
    from .batch import DistillBatch, DistillInputs, PipelineInfo
    from .objectives import functional
    from .objectives.base import (
        ComposedObjective,
        Objective,
        PipelineMismatchError,
        check_requirements,
        check_temperature_weight,
        unit_count,
    )
    from .objectives.calm import active_chunk_log_probs
    from .objectives.kl import token_rows
    from .schedulers.masking import MaskingSchedule
    from .teachers.base import TeacherAdapter, TeacherConfig


def __getattr__(name: str) -> Any:
    import importlib

    if name == "functional":
        return importlib.import_module("tide_plugin.objectives.functional")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tide_plugin' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names and the lazy exports, which exist before first use."""
    return sorted(set(globals()) | set(__all__))


__version__ = "0.1.0"

__all__ = [
    "KINDS",
    "REQUIREMENTS",
    "UNITS",
    "CollatorStageProtocol",
    "ComposedObjective",
    "DistillBatch",
    "DistillInputs",
    "DuplicatePluginError",
    "MaskingSchedule",
    "MaskingScheduleProtocol",
    "Objective",
    "ObjectiveConfigProtocol",
    "ObjectiveProtocol",
    "PipelineInfo",
    "PipelineMismatchError",
    "PluginContractError",
    "PluginError",
    "PluginInfo",
    "PluginKind",
    "PluginLoadWarning",
    "PluginSpec",
    "Requirement",
    "ResumableStageProtocol",
    "RunContext",
    "StrengthScheduleProtocol",
    "TeacherAdapter",
    "TeacherConfig",
    "TeacherProtocol",
    "Unit",
    "UnknownOptionError",
    "UnknownPluginError",
    "active_chunk_log_probs",
    "available",
    "check_requirements",
    "check_temperature_weight",
    "functional",
    "get_collator",
    "get_masking_schedule",
    "get_objective",
    "get_registry",
    "get_strength_schedule",
    "get_teacher",
    "hookimpl",
    "hookspec",
    "objective_requirements",
    "token_rows",
    "unit_count",
]
