"""The whole plugin contract of tide-plugin.

A plugin is a Python module (or object) that implements one or more of the hooks
below with :data:`hookimpl`. It is found through the entry-point group
``tide_plugin``; the package's own built-ins are registered that way too.

Each registration hook returns the :class:`PluginSpec` objects the module offers;
the registry (:mod:`tide_plugin.registry`) stores them by name. Nothing is
registered as a side effect of importing or subclassing.

Example, in a third-party package ``my_objective.py``::

    from tide_plugin import PluginSpec, hookimpl

    @hookimpl
    def tide_plugin_objectives():
        return [PluginSpec(name="my_loss", factory=MyLoss, summary="...")]

and in its ``pyproject.toml``::

    [project.entry-points.tide_plugin]
    my_objective = "my_objective"
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import pluggy

if TYPE_CHECKING:
    from torch import Tensor

PROJECT_NAME = "tide_plugin"
"""The pluggy project name and the entry-point group."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

PluginKind = Literal["objective", "collator", "scheduler", "teacher", "decoder"]
KINDS: tuple[PluginKind, ...] = ("objective", "collator", "scheduler", "teacher", "decoder")


@dataclass(frozen=True)
class PluginSpec:
    """What a registration hook returns: one named, configurable plugin.

    :param name: registry name, a snake_case noun (``reverse_calm``).
    :param factory: called with keyword configuration to build the plugin
        (usually a class whose config is a dataclass).
    :param summary: one line shown by ``tide plugins``.
    :param aliases: other names accepted for this plugin (the reference CLI's
        mode strings, for instance).
    :param alias_config: configuration preset applied when the plugin is built
        through a given alias, e.g. ``{"kl_aligned": {"aligned": True}}``;
        explicit configuration given by the caller wins.
    :param config_cls: the config dataclass, if any (for documentation and
        validation tools).
    """

    name: str
    factory: Callable[..., Any]
    summary: str = ""
    aliases: Sequence[str] = ()
    alias_config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    config_cls: type | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "a").isalnum() or self.name != self.name.lower():
            raise ValueError(f"plugin name {self.name!r} must be a non-empty snake_case identifier")
        if not callable(self.factory):
            raise TypeError(f"plugin {self.name!r}: factory {self.factory!r} is not callable")
        unknown = set(self.alias_config) - set(self.aliases)
        if unknown:
            raise ValueError(
                f"plugin {self.name!r}: alias_config names {sorted(unknown)} that are not in aliases {list(self.aliases)}"
            )


@hookspec
def tide_plugin_objectives() -> Sequence[PluginSpec]:
    """Offer distillation objectives.

    An objective's factory builds an object with ``__call__(inputs) -> dict[str, Tensor]``
    (see :class:`tide_plugin.objectives.base.Objective`): named scalar loss parts
    that the trainer weights, sums and logs.

    :return: the objectives this plugin provides.
    """


@hookspec
def tide_plugin_collators() -> Sequence[PluginSpec]:
    """Offer collator stages.

    A collator's factory builds a callable stage of the collator chain: the first
    stage takes the list of dataset rows, every later stage takes and returns a
    :class:`tide_plugin.batch.DistillBatch`.

    :return: the collator stages this plugin provides.
    """


@hookspec
def tide_plugin_schedulers() -> Sequence[PluginSpec]:
    """Offer schedules: masking schedules ``alpha(t)`` and distillation-strength
    schedules (the TIDAL lambda).

    :return: the schedulers this plugin provides.
    """


@hookspec
def tide_plugin_teachers() -> Sequence[PluginSpec]:
    """Offer teacher adapters.

    A teacher adapter's factory builds an object that turns noised teacher ids into
    teacher logits ``[b, L_T, V_T]`` under ``no_grad`` for one architecture family
    (bidirectional masked diffusion, block diffusion, ...).

    :return: the teacher adapters this plugin provides.
    """


@runtime_checkable
class Decoder(Protocol):
    """What a decoder factory builds: the choice of which masked positions of the
    current block one model call commits (:mod:`tide_plugin.eval.sampler`).

    ``name`` is reported next to the results; ``describe()`` returns its options
    (``{"threshold": 0.9}``) for the results JSON.
    """

    name: str

    def calls(self, block_length: int, budget: int) -> int | None:
        """Model calls a block of ``block_length`` masks takes, if fixed in advance.

        :param budget: the calls the sampler's ``steps`` / ``steps_per_block``
            schedule gives this block (``block_length`` by default).
        :return: the number of calls, or ``None`` when it depends on the predictions.
        """

    def select(self, confidence: Tensor, masked: Tensor, *, call: int, budget: int) -> Tensor:
        """Positions to commit at call ``call`` (0-based) of the current block.

        :param confidence: ``[b, L]`` float32, the confidence of each position's
            prediction (``p(pred)``; uniform noise under ``remasking="random"``),
            ``-inf`` where the position is already committed.
        :param masked: ``[b, L]`` bool, the positions still masked.
        :return: ``[b, L]`` bool, a subset of ``masked`` with at least one position
            in every row that has one masked (the sampler checks both).
        """

    def describe(self) -> dict[str, Any]:
        """The decoder's options, for reports (``{}`` when it has none)."""


@hookspec
def tide_plugin_decoders() -> Sequence[PluginSpec]:
    """Offer decoding strategies of the block-diffusion sampler (``one_per_step``,
    ``threshold``, ``fixed_k``, ...), selected by name with ``generate(decoder=...)``
    and ``tide eval --decoder``.

    A decoder's factory is called with the decoder's options as keywords and builds
    a :class:`Decoder`.

    :return: the decoders this plugin provides.
    """


HOOKS_BY_KIND: dict[PluginKind, str] = {
    "objective": "tide_plugin_objectives",
    "collator": "tide_plugin_collators",
    "scheduler": "tide_plugin_schedulers",
    "teacher": "tide_plugin_teachers",
    "decoder": "tide_plugin_decoders",
}
