"""tide-plugin: TIDE cross-architecture distillation for diffusion LLMs as named plugins.

Public API::

    import tide_plugin
    tide_plugin.get_objective("reverse_calm", temperature=2.0)
    tide_plugin.get_objective("tidal_calm+calm")          # composition over one forward
    tide_plugin.available("objective")                    # name -> PluginInfo

Everything a plugin author needs is exported here: the hook markers and
:class:`PluginSpec`, the protocols of what each kind builds, the objective base
class and its helpers, the batch structures an objective reads, and the masking
schedule base class. The registry reads entry points on first use, never at import.
"""

from .batch import DistillBatch, DistillInputs, PipelineInfo
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
from .registry import (
    DuplicatePluginError,
    PluginContractError,
    PluginError,
    PluginInfo,
    PluginLoadWarning,
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
from .schedulers.masking import MaskingSchedule

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
    "TeacherProtocol",
    "Unit",
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
