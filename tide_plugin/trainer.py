"""Former home of the trainer; the names now live in :mod:`tide_plugin.training`
(and ``tide distill`` in :mod:`tide_plugin.cli.distill`). Kept so that
``from tide_plugin.trainer import DistillConfig, build_trainer`` keeps working."""

from .training import *  # noqa: F401,F403
from .training import __all__  # noqa: F401
