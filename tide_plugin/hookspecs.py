"""The whole plugin contract of tide-plugin: the hooks, and what each kind builds.

A plugin is a Python module (or object) that implements one or more of the hooks
below, each a function marked with :func:`hookimpl`. It is found through the
entry-point group ``tide_plugin``; the package's own built-ins are registered that
way too.

There is one hook per kind, and each takes nothing and returns the
:class:`PluginSpec` objects the plugin offers of that kind: the hook's name says
the kind. The registry (:mod:`tide_plugin.registry`) is the one place plugins are
registered: it calls each hook of a plugin once, stores the specs by kind and name,
and checks that what a spec's factory builds fits the kind's protocol below
(:data:`PROTOCOL_BY_KIND`). Nothing is registered as a side effect of importing
or subclassing.

Example, in a third-party package ``my_objective.py``::

    from tide_plugin import Objective, PluginSpec, hookimpl

    @hookimpl
    def tide_plugin_objectives():
        return [PluginSpec(name="my_loss", factory=MyLoss, config_cls=MyLossConfig, summary="...")]

and in its ``pyproject.toml``::

    [project.entry-points.tide_plugin]
    my_objective = "my_objective"
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:  # the contract module itself imports no torch
    from torch import Tensor

    from .batch import DistillBatch, DistillInputs, PipelineInfo

PROJECT_NAME = "tide_plugin"
"""The entry-point group, and the prefix of the hook names and markers."""

IMPL_MARK = f"{PROJECT_NAME}_impl"
"""The attribute :func:`hookimpl` sets on a hook implementation (the one
``pluggy.HookimplMarker("tide_plugin")`` sets, so a plugin marked that way is read too)."""
SPEC_MARK = f"{PROJECT_NAME}_spec"
"""The attribute :func:`hookspec` sets on a hook declaration."""


def hookimpl(function: Callable[..., Any] | None = None, /) -> Any:
    """Mark ``function`` as a plugin's implementation of the hook it is named after;
    ``@hookimpl`` and ``@hookimpl()`` both work. The registry calls every marked
    function of a plugin whose name is a hook (:data:`HOOKS_BY_KIND`), and refuses the
    plugin if a marked name is none."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        setattr(fn, IMPL_MARK, True)
        return fn

    return mark if function is None else mark(function)


def hookspec(function: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a hook declaration (the functions below): its name, signature and docstring
    are the hook's contract."""
    setattr(function, SPEC_MARK, True)
    return function

PluginKind = Literal["objective", "collator", "masking_schedule", "strength_schedule", "teacher", "decoder"]
KINDS: tuple[PluginKind, ...] = ("objective", "collator", "masking_schedule", "strength_schedule", "teacher", "decoder")

Requirement = Literal["token_alignment", "pairs", "chunks", "timestep", "progress", "projection"]
"""What an objective needs from the data pipeline and the trainer:

- ``token_alignment``: student and teacher positions correspond one to one
  (pipeline ``same``, or ``shared`` read through pairs);
- ``pairs``: template-aligned position pairs (pipeline ``shared``);
- ``chunks``: byte-exact chunks across tokenizers (pipeline ``cross``);
- ``timestep``: the diffusion timestep ``batch.t`` (the ``noise`` stage);
- ``progress``: training progress ``global_step / max_steps``;
- ``projection``: a vocabulary projection ``W`` ``[V_T, V_S]`` from the teacher's
  tokens to the student's, built once per tokenizer pair (``inputs.projection``)."""
REQUIREMENTS: tuple[str, ...] = ("token_alignment", "pairs", "chunks", "timestep", "progress", "projection")

Unit = Literal["masked_rows", "pairs", "active_chunks"]
"""What an objective part sums over (the trainer divides each part once by the
count of its unit over the accumulation window): masked student positions, counted template pairs (``pair_mask``
and the student position masked), or active chunks (``batch.chunk_active``)."""
UNITS: tuple[str, ...] = ("masked_rows", "pairs", "active_chunks")


@dataclass(frozen=True)
class PluginSpec:
    """What a registration hook returns: one named, configurable plugin.

    :param name: registry name, a snake_case noun (``reverse_calm``).
    :param factory: called with keyword configuration to build the plugin
        (usually a class whose config is a dataclass); what it builds must fit
        the kind's protocol (:data:`PROTOCOL_BY_KIND`).
    :param summary: one line shown by ``tide plugins``.
    :param aliases: other names accepted for this plugin (the reference CLI's
        mode strings, for instance).
    :param alias_config: configuration preset applied when the plugin is built
        through a given alias, e.g. ``{"kl_aligned": {"aligned": True}}``;
        explicit configuration given by the caller wins.
    :param config_cls: the config dataclass, built from the same keywords. For an
        objective it is required and declares ``requirements`` and ``unit``
        (:class:`ObjectiveConfigProtocol`), so they are known without building.
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


DEFAULT_BLOCK_SIZE = 32
"""The student's block size ``B`` unless a run says otherwise: the reference's
(docs/method.md#recipes). Every default block size of the package is this one."""


@dataclass(frozen=True)
class RunContext:
    """What a run knows before any batch, handed to the collator stages that ask
    for it (:attr:`CollatorStageProtocol.run_context`): a stage declares which of
    these fields fill which of its configuration keys; explicit stage
    configuration wins."""

    pipeline: str | None = None
    block_size: int = DEFAULT_BLOCK_SIZE
    seed: int = 0
    student_eos_id: int | None = None
    student_mask_id: int | None = None
    student_pad_id: int | None = None
    teacher_mask_id: int | None = None
    teacher_pad_id: int = 0
    teacher_eos_id: int | None = None
    max_length: int | None = None
    teacher_max_length: int | None = None
    masking_schedule: str = "linear"
    time_epsilon: float = 1e-3
    ce_weighting: str = "elbo"
    demo_ratio: float = 0.5
    chunk_noise: str = "unbiased"


# -- what each kind's factory builds ------------------------------------------------------
# A protocol's members without a value are required: the registry refuses a built plugin
# that lacks one. Members with a value are optional: the value is the default the trainer
# assumes when a plugin leaves the member out, and the kind's base class sets the same.


class Itself:
    """The default of :attr:`ObjectiveProtocol.components`: read on an objective, the
    tuple of the objective alone. A composed objective sets its own ``components``
    (an instance attribute, which hides this)."""

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else (obj,)

    def __repr__(self) -> str:
        return "(the objective itself,)"


@runtime_checkable
class ObjectiveConfigProtocol(Protocol):
    """An objective's config class (``PluginSpec.config_cls``): built from the same
    keywords as the objective, it says what the objective needs, without building it."""

    requirements: frozenset[str]
    """Subset of :data:`REQUIREMENTS`."""
    unit: str
    """One of :data:`UNITS`: what the objective's part sums over."""


@runtime_checkable
class ObjectiveProtocol(Protocol):
    """A distillation objective (base class: :class:`tide_plugin.Objective`).

    ``__call__(inputs)`` reads a :class:`~tide_plugin.batch.DistillInputs` (student
    logits ``[b, L, V_S]``, teacher logits ``[b, L_T, V_T]``, the batch, progress)
    and returns named scalar loss parts, already weighted; the trainer adds them to
    the CE term and logs each. The members with a value are optional: the base class
    sets each to the default shown, which is what the trainer assumes when one is
    left out (read them with :func:`member`).
    """

    name: str
    requirements: frozenset[str]
    units: Mapping[str, str]
    """Part name -> the :data:`Unit` it sums over."""

    reads_teacher: bool = True
    """False for an objective that never reads ``inputs.teacher_logits`` (the CE-only
    control): the trainer then builds no teacher and runs no teacher forward."""
    supports_projected_logits: bool = False
    """True when ``__call__`` also takes ``inputs.student_logits`` / ``teacher_logits``
    as projected logits (hidden states and the output layer, read only through the
    package's row functions): the trainer's fused output layer is used only when the
    objective says so; otherwise it gets full ``[b, L, V]`` logits."""
    interpolates_teacher: bool = False
    """True when the target mixes student and teacher by a strength schedule (TIDAL):
    the reference's ``taid_weight`` applies to it, and composing it with a reverse
    objective is warned about. Read on the spec's factory (the class) too."""
    direction: Literal["forward", "reverse"] = "forward"
    """``reverse`` for a student-weighted (mode-seeking) objective (reverse KL, Reverse CALM)."""
    components: Sequence[ObjectiveProtocol] = Itself()
    """The objectives this one is made of: the parts of a composed objective (``a+b``),
    the objective alone otherwise."""

    def __call__(self, inputs: DistillInputs) -> dict[str, Tensor]: ...

    def check_pipeline(self, info: PipelineInfo) -> None:
        """Raise ``PipelineMismatchError`` naming what ``info`` lacks."""

    def metrics(self, inputs: DistillInputs) -> dict[str, Tensor]:
        """Extra detached scalars to log this step (e.g. ``lambda/tidal``)."""


@runtime_checkable
class CollatorStageProtocol(Protocol):
    """A stage of the collator chain. The first stage takes the list of dataset
    rows (``stage_input = "rows"``), every later one takes and returns a
    :class:`~tide_plugin.batch.DistillBatch` (``"batch"``). ``requires`` and
    ``provides`` name chain capabilities (``padded``, ``noised``, ``comp_demo``)
    checked when the chain is built. A stage that draws random numbers also has
    ``resume(batches_done)`` (:class:`ResumableStageProtocol`)."""

    stage_input: str
    requires: frozenset[str]
    provides: frozenset[str]

    run_context: Mapping[str, str] = MappingProxyType({})
    """Declared on the stage's class (the spec's factory, read before the stage is
    built): a mapping from its configuration keys to :class:`RunContext` fields, e.g.
    ``{"mask_id": "student_mask_id", "seed": "seed"}``; the trainer fills those keys
    from the run, whichever plugin provides the stage (explicit configuration wins)."""

    def __call__(self, data: Any) -> DistillBatch: ...


@runtime_checkable
class ResumableStageProtocol(Protocol):
    """A stage with a random stream: on resume the trainer tells it how many
    batches the run has already consumed, so it continues the same stream."""

    def resume(self, batches_done: int) -> None: ...


@runtime_checkable
class TeacherProtocol(Protocol):
    """A teacher adapter (base class :class:`tide_plugin.TeacherAdapter`):
    ``__call__(batch)`` returns teacher logits ``[b, L_T, V_T]`` under ``no_grad``,
    views merged; ``mask_token_id`` is ``m_T`` (or ``None`` when unknown)."""

    mask_token_id: int | None

    model: Any = None
    """The wrapped model (a ``torch.nn.Module``), read for the size of its output layer
    (``V_T``) and whether that layer can be fused; ``None``: not known."""
    projected_logits: Callable[[DistillBatch], Any] | None = None
    """The fused output layer's teacher side: ``projected_logits(batch)`` returns
    ``ProjectedLogits``, the merged hidden states with the output layer (no
    ``[b, L_T, V_T]`` logits), or ``None`` when this teacher's head cannot be fused;
    ``None`` as the member: this teacher never can."""

    def __call__(self, batch: DistillBatch) -> Tensor: ...

    def to(self, device: Any) -> Any: ...


@runtime_checkable
class MaskingScheduleProtocol(Protocol):
    """A masking schedule ``alpha(t)`` (base class :class:`tide_plugin.MaskingSchedule`).
    Every method takes ``t`` ``[b]`` (or a number) and returns float32 ``[b]``."""

    def alpha(self, t: Tensor | float) -> Tensor:
        """Probability that a token is kept."""

    def alpha_prime(self, t: Tensor | float) -> Tensor:
        """``d alpha / dt``."""

    def mask_prob(self, t: Tensor | float) -> Tensor:
        """``1 - alpha(t)``."""

    def elbo_weight(self, t: Tensor | float) -> Tensor:
        """The CE weight ``w(t) = -alpha'(t) / (1 - alpha(t) + 1e-6)`` (docs/method.md#noising)."""


@runtime_checkable
class StrengthScheduleProtocol(Protocol):
    """A distillation-strength schedule (TIDAL's lambda, docs/method.md#tidal): ``lambda_``
    ``[b]`` in ``[0, 1]`` from training progress and timesteps ``t`` ``[b]``, and the
    timestep weight ``omega(t)`` ``[b]``."""

    def lambda_(self, progress: float, t: Tensor) -> Tensor: ...

    def weight(self, t: Tensor) -> Tensor: ...


@runtime_checkable
class DecoderProtocol(Protocol):
    """A decoding strategy of the block-diffusion sampler
    (:mod:`tide_plugin.eval.decoders`): which masked positions of the current
    block one model call commits. ``name`` is reported next to the results."""

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
        """The decoder's options for reports, e.g. ``{"threshold": 0.9}`` (``{}`` if none)."""


Decoder = DecoderProtocol
"""Short name of :class:`DecoderProtocol`."""


PROTOCOL_BY_KIND: dict[str, type] = {
    "objective": ObjectiveProtocol,
    "collator": CollatorStageProtocol,
    "masking_schedule": MaskingScheduleProtocol,
    "strength_schedule": StrengthScheduleProtocol,
    "teacher": TeacherProtocol,
    "decoder": DecoderProtocol,
}
"""Kind -> the protocol what its factory builds must fit (checked by the registry)."""


def protocol_members(protocol: type) -> tuple[str, ...]:
    """The attribute and method names a runtime-checkable protocol declares, required
    and optional (``isinstance`` against the protocol checks them all)."""
    names = getattr(protocol, "__protocol_attrs__", None)
    if names is None:  # Python < 3.12
        from typing import _get_protocol_attrs  # type: ignore[attr-defined]

        names = _get_protocol_attrs(protocol)
    return tuple(sorted(names))


def member_defaults(protocol: type) -> dict[str, Any]:
    """The optional members of ``protocol``, each with the default a plugin that leaves
    it out gets (the members the protocol declares with a value, not a method)."""
    own = {k: v for cls in reversed(protocol.__mro__) for k, v in vars(cls).items()}
    return {name: own[name] for name in protocol_members(protocol) if name in own and not callable(own[name])}


def required_members(protocol: type) -> tuple[str, ...]:
    """The members of ``protocol`` every plugin of its kind must have."""
    optional = member_defaults(protocol)
    return tuple(name for name in protocol_members(protocol) if name not in optional)


def member(obj: object, protocol: type, name: str) -> Any:
    """``obj.name``, or the default ``protocol`` declares for that optional member."""
    default = member_defaults(protocol)[name]
    if isinstance(default, Itself):
        default = default.__get__(obj, type(obj))
    return getattr(obj, name, default)


def missing_members(obj: object, protocol: type) -> list[str]:
    """The required members of ``protocol`` that ``obj`` lacks (empty when it fits)."""
    return [name for name in required_members(protocol) if not hasattr(obj, name)]


# -- the hooks ------------------------------------------------------------------------------
@hookspec
def tide_plugin_objectives() -> Sequence[PluginSpec]:
    """Offer distillation objectives.

    Each factory builds an :class:`ObjectiveProtocol` object (subclass
    :class:`tide_plugin.Objective`); the spec's ``config_cls`` declares its
    ``requirements`` and ``unit`` (:class:`ObjectiveConfigProtocol`).

    :return: the objectives this plugin provides.
    """


@hookspec
def tide_plugin_collators() -> Sequence[PluginSpec]:
    """Offer collator stages.

    Each factory builds a :class:`CollatorStageProtocol` stage: the first stage
    takes the list of dataset rows, every later stage takes and returns a
    :class:`tide_plugin.batch.DistillBatch`.

    :return: the collator stages this plugin provides.
    """


@hookspec
def tide_plugin_masking_schedules() -> Sequence[PluginSpec]:
    """Offer masking schedules ``alpha(t)`` of the forward diffusion process
    (:class:`MaskingScheduleProtocol`), selected by the ``noise`` stage's
    ``schedule`` (``--masking_schedule``).

    :return: the masking schedules this plugin provides.
    """


@hookspec
def tide_plugin_strength_schedules() -> Sequence[PluginSpec]:
    """Offer distillation-strength schedules (:class:`StrengthScheduleProtocol`),
    selected by name by the objectives that interpolate student and teacher
    (``tidal``, ``tidal_calm``: ``schedule="tidal"``).

    :return: the strength schedules this plugin provides.
    """


@hookspec
def tide_plugin_teachers() -> Sequence[PluginSpec]:
    """Offer teacher adapters.

    Each factory builds a :class:`TeacherProtocol` object that turns noised teacher
    ids into teacher logits ``[b, L_T, V_T]`` under ``no_grad`` for one architecture
    family (bidirectional masked diffusion, block diffusion, ...).

    :return: the teacher adapters this plugin provides.
    """


@hookspec
def tide_plugin_decoders() -> Sequence[PluginSpec]:
    """Offer decoding strategies of the block-diffusion sampler (``one_per_step``,
    ``threshold``, ``fixed_k``, ...), selected by name with ``generate(decoder=...)``
    and ``tide eval --decoder``.

    Each factory is called with the decoder's options as keywords and builds a
    :class:`DecoderProtocol` object.

    :return: the decoders this plugin provides.
    """


HOOKS_BY_KIND: dict[PluginKind, str] = {
    "objective": "tide_plugin_objectives",
    "collator": "tide_plugin_collators",
    "masking_schedule": "tide_plugin_masking_schedules",
    "strength_schedule": "tide_plugin_strength_schedules",
    "teacher": "tide_plugin_teachers",
    "decoder": "tide_plugin_decoders",
}
