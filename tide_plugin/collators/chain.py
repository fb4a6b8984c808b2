"""Compose collator stages by registered name into one DataLoader ``collate_fn``.

::

    collate = build_collator_chain(
        ["distill_pad", "noise", "comp_demo"],
        distill_pad={"eos_id": 151643, "block_size": 32},
        noise={"mask_id": 151669, "teacher_mask_id": 156895, "seed": 0},
        comp_demo={"demo_ratio": 0.5, "seed": 0},
    )
    batch = collate(rows)          # -> DistillBatch

The first stage takes the list of rows; every later stage takes and returns a
:class:`~tide_plugin.batch.DistillBatch`. The order is checked when the chain is
built: a stage declares ``stage_input`` (``"rows"`` or ``"batch"``), and the
capabilities it ``requires`` from earlier stages and ``provides`` to later ones
(built-ins: ``distill_pad`` provides ``padded``, ``noise`` requires ``padded``
and provides ``noised``, ``comp_demo`` requires both). A registered stage must
have them (:class:`~tide_plugin.hookspecs.CollatorStageProtocol`, checked when
built); an already built callable without them is taken to read a batch and
require nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..batch import DistillBatch

StageSpec = str | tuple[str, Mapping[str, Any]] | Mapping[str, Any] | Callable[..., Any]


class CollatorChainError(ValueError):
    """The stages of a collator chain are in an impossible order or misconfigured."""


class CollatorChain:
    """A picklable ``collate_fn``: ``rows -> DistillBatch`` through ``stages`` in order."""

    def __init__(self, names: Sequence[str], stages: Sequence[Callable[..., Any]]):
        self.names = list(names)
        self.stages = list(stages)

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> DistillBatch:
        out: Any = rows
        for stage in self.stages:
            out = stage(out)
        if not isinstance(out, DistillBatch):
            raise TypeError(f"collator chain {self.names}: the last stage returned {type(out).__name__}, not DistillBatch")
        return out

    def stage(self, name: str) -> Any:
        """The built stage registered under ``name``."""
        if name not in self.names:
            raise KeyError(f"collator chain has no stage {name!r}; stages: {self.names}")
        return self.stages[self.names.index(name)]

    def __repr__(self) -> str:
        return f"CollatorChain({' -> '.join(self.names)})"


def _parse(spec: StageSpec, position: int) -> tuple[str, dict[str, Any], Callable[..., Any] | None]:
    if isinstance(spec, str):
        return spec.strip(), {}, None
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], Mapping):
        return spec[0], dict(spec[1]), None
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise CollatorChainError(f"collator chain stage {position} {dict(spec)!r} has no 'name' key")
        cfg = dict(spec)
        return str(cfg.pop("name")), cfg, None
    if callable(spec):
        return getattr(spec, "name", type(spec).__name__), {}, spec
    raise CollatorChainError(
        f"collator chain stage {position}: {spec!r} is not a name, a (name, config) pair, a dict with 'name', or a callable"
    )


def build_collator_chain(names_or_specs: str | Sequence[StageSpec], **per_stage_config: Mapping[str, Any]) -> CollatorChain:
    """Build the chain. ``names_or_specs`` is a list of registered names (or
    aliases), ``(name, config)`` pairs, ``{"name": ..., **config}`` dicts or already
    built stages; a string ``"distill_pad+noise+comp_demo"`` is accepted too.
    ``per_stage_config`` gives configuration per stage under the name as written
    (``noise={"mask_id": ...}``); it is merged over the inline configuration."""
    from ..registry import get_registry

    if isinstance(names_or_specs, str):
        names_or_specs = [p for p in names_or_specs.replace(",", "+").split("+") if p.strip()]
    specs = list(names_or_specs)
    if not specs:
        raise CollatorChainError("a collator chain needs at least one stage (e.g. ['distill_pad', 'noise'])")
    parsed = [_parse(s, i) for i, s in enumerate(specs)]
    written = [name for name, _, _ in parsed]
    if len(set(written)) != len(written):
        raise CollatorChainError(f"collator chain {written} names a stage twice")
    unused = set(per_stage_config) - set(written)
    if unused:
        raise CollatorChainError(
            f"collator chain {written}: configuration given for {sorted(unused)}, which is not a stage of the chain"
        )
    reg = get_registry()
    factories: list[Any] = []
    canonical: list[str] = []
    for name, _, built in parsed:
        if built is not None:
            factories.append(built)
            canonical.append(name)
        else:
            info = reg.resolve("collator", name)  # UnknownPluginError lists the registered collators
            factories.append(info.spec.factory)
            canonical.append(info.name)
    # The order is checked on the stage classes first, so a wrong order is reported
    # before any stage's configuration is validated.
    check_order(canonical, factories)
    stages: list[Callable[..., Any]] = []
    for (name, inline, built), factory in zip(parsed, factories):
        if built is not None:
            stages.append(built)
            continue
        cfg = {**inline, **dict(per_stage_config.get(name, {}))}
        try:
            stages.append(reg.build("collator", name, **cfg))
        except TypeError as exc:
            raise CollatorChainError(f"collator stage {name!r}: bad configuration {sorted(cfg)}: {exc}") from exc
    check_order(canonical, stages)
    return CollatorChain(canonical, stages)


def check_order(names: Sequence[str], stages: Sequence[Any]) -> None:
    """Raise :class:`CollatorChainError` if a stage's input or requirements are not
    met by the stages before it."""
    have: set[str] = set()
    for i, (name, stage) in enumerate(zip(names, stages)):
        takes = getattr(stage, "stage_input", "batch")
        needs = set(getattr(stage, "requires", ()))
        if i == 0 and takes != "rows":
            raise CollatorChainError(
                f"collator chain {list(names)}: the first stage must take dataset rows, but {name!r} takes a "
                "DistillBatch; start the chain with 'distill_pad'"
            )
        if i > 0 and takes == "rows":
            raise CollatorChainError(
                f"collator chain {list(names)}: {name!r} takes dataset rows, so it must be the first stage "
                f"(it is at position {i})"
            )
        missing = needs - have
        if missing:
            providers = {"padded": "distill_pad", "noised": "noise", "comp_demo": "comp_demo"}
            hint = ", ".join(sorted(providers.get(m, m) for m in missing))
            raise CollatorChainError(
                f"collator chain {list(names)}: {name!r} needs {sorted(missing)} from an earlier stage; "
                f"put {hint} before {name!r}"
            )
        have |= set(getattr(stage, "provides", ()))
