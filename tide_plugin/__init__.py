"""tide-plugin: TIDE cross-architecture distillation for diffusion LLMs as named plugins.

Public API::

    import tide_plugin
    tide_plugin.get_objective("reverse_calm", temperature=2.0)
    tide_plugin.get_objective("tidal_calm+calm")          # composition over one forward
    tide_plugin.available("objective")                    # name -> PluginInfo

Nothing is loaded at import time: the registry reads entry points on first use.
"""

from .hookspecs import KINDS, PluginSpec, hookimpl, hookspec
from .registry import (
    DuplicatePluginError,
    PluginError,
    PluginInfo,
    PluginLoadWarning,
    UnknownPluginError,
    available,
    get_collator,
    get_objective,
    get_registry,
    get_scheduler,
    get_teacher,
)

__version__ = "0.1.0"

__all__ = [
    "KINDS",
    "DuplicatePluginError",
    "PluginError",
    "PluginInfo",
    "PluginLoadWarning",
    "PluginSpec",
    "UnknownPluginError",
    "available",
    "get_collator",
    "get_objective",
    "get_registry",
    "get_scheduler",
    "get_teacher",
    "hookimpl",
    "hookspec",
]
