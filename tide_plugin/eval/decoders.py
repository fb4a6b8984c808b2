"""Decoding strategies of the block-diffusion sampler, a registered plugin kind
(``decoder``, hook ``tide_plugin_decoders``).

Inside the current block, each model call predicts every masked position (the
sampler's argmax or tempered draw, with a confidence per position); a decoder
chooses which of them to commit. Built-ins:

* ``one_per_step`` (default, the paper's protocol): a fixed schedule, the
  sampler's ``steps`` / ``steps_per_block`` spread evenly over the block; with
  the default ``steps = max_new_tokens`` it commits one token per call.
* ``threshold``: every masked position whose confidence is at least ``tau``,
  and at least the most confident one, per call (Fast-dLLM's parallel decoding).
* ``fixed_k``: the ``k`` most confident masked positions per call (fewer at the
  end of a block).

A third-party package offers another one exactly like the built-ins::

    @hookimpl
    def tide_plugin_decoders():
        return [PluginSpec(name="my_decoder", factory=MyDecoder, summary="...")]

where ``MyDecoder(**options)`` builds an object with the methods of
:class:`tide_plugin.hookspecs.Decoder`.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..hookspecs import PluginSpec, hookimpl

DEFAULT_DECODER = "one_per_step"


def transfer_schedule(n_masked: int, steps: int) -> list[int]:
    """Tokens to commit at each of ``steps`` steps for a block of ``n_masked``
    masks: as even as possible, the remainder in the earliest steps."""
    base, extra = divmod(n_masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def top_k_commit(confidence: Tensor, masked: Tensor, k: int) -> Tensor:
    """``[b, L]`` bool: the ``k`` most confident masked positions of each row (all
    of them if fewer). ``confidence`` ``[b, L]`` float is ``-inf`` where not masked."""
    k = min(int(k), confidence.shape[-1])
    chosen = confidence.topk(k, dim=-1).indices
    return torch.zeros_like(masked).scatter_(-1, chosen, True) & masked


@dataclass(frozen=True)
class OnePerStepConfig:
    """No options: the schedule comes from the sampler's ``steps`` / ``steps_per_block``."""


class OnePerStep:
    """The paper's protocol: block ``j`` takes the sampler's scheduled number of
    calls ``budget`` and commits :func:`transfer_schedule` tokens per call."""

    name = "one_per_step"

    def __init__(self, **config: Any) -> None:
        self.config = OnePerStepConfig(**config)

    def calls(self, block_length: int, budget: int) -> int | None:
        return budget

    def select(self, confidence: Tensor, masked: Tensor, *, call: int, budget: int) -> Tensor:
        k = transfer_schedule(masked.shape[-1], budget)[call]
        return top_k_commit(confidence, masked, k)

    def describe(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class ThresholdConfig:
    """:param threshold: confidence ``tau`` in ``(0, 1]`` at or above which a masked
    position is committed (1 commits one token per call unless a prediction is certain)."""

    threshold: float = 0.9

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be a number in (0, 1], got {self.threshold!r}")


class Threshold:
    """Commit every masked position with confidence >= ``threshold``; a row with
    masks left commits at least its most confident one. Calls per block are not
    fixed in advance: between 1 and the block's length ``L``."""

    name = "threshold"

    def __init__(self, **config: Any) -> None:
        self.config = ThresholdConfig(**config)

    def calls(self, block_length: int, budget: int) -> int | None:
        return None

    def select(self, confidence: Tensor, masked: Tensor, *, call: int, budget: int) -> Tensor:
        best = top_k_commit(confidence, masked, 1)
        return (masked & (confidence >= self.config.threshold)) | best

    def describe(self) -> dict[str, Any]:
        return {"threshold": self.config.threshold}


@dataclass(frozen=True)
class FixedKConfig:
    """:param k: masked positions committed per call (the most confident ones)."""

    k: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be a positive integer, got {self.k!r}")


class FixedK:
    """Commit the ``k`` most confident masked positions per call: a block of
    ``L`` positions takes ``ceil(L / k)`` calls."""

    name = "fixed_k"

    def __init__(self, **config: Any) -> None:
        self.config = FixedKConfig(**config)

    def calls(self, block_length: int, budget: int) -> int | None:
        return math.ceil(block_length / self.config.k)

    def select(self, confidence: Tensor, masked: Tensor, *, call: int, budget: int) -> Tensor:
        return top_k_commit(confidence, masked, self.config.k)

    def describe(self) -> dict[str, Any]:
        return {"k": self.config.k}


@hookimpl
def tide_plugin_decoders() -> list[PluginSpec]:
    return [
        PluginSpec(name="one_per_step", factory=OnePerStep, config_cls=OnePerStepConfig,
                   summary="the paper's protocol: the sampler's steps spread evenly, default one token per call"),
        PluginSpec(name="threshold", factory=Threshold, config_cls=ThresholdConfig,
                   summary="commit every masked position with confidence >= threshold (at least one per call)"),
        PluginSpec(name="fixed_k", factory=FixedK, config_cls=FixedKConfig,
                   summary="commit the k most confident masked positions per call"),
    ]


# -- building by name, and the command-line flags ------------------------------------


def get_decoder(name: str = DEFAULT_DECODER, **options: Any) -> Any:
    """Build a decoder by registered name; the registry checks the options against
    its config dataclass, so a wrong option names the allowed ones."""
    from ..registry import get_registry

    return get_registry().build("decoder", name, **options)


def decoder_name(decoder: Any) -> str:
    return str(getattr(decoder, "name", type(decoder).__name__))


def describe(decoder: Any) -> dict[str, Any]:
    """``{"decoder": name, **options}`` for reports."""
    options = decoder.describe() if hasattr(decoder, "describe") else {}
    return {"decoder": decoder_name(decoder), **dict(options)}


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_decoder_args(items: list[str] | str | Mapping[str, Any] | None) -> dict[str, Any]:
    """``["k=4", "tau=0.5"]`` or ``"k=4,tau=0.5"`` or a mapping -> options (JSON values)."""
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return dict(items)
    if isinstance(items, str):
        items = [p for p in items.split(",") if p.strip()]
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"decoder option {item!r} is not KEY=VALUE")
        out[key.strip()] = _value(value.strip())
    return out


def add_decoder_arguments(parser: argparse.ArgumentParser) -> None:
    """``--decoder``, ``--threshold``, ``--k``, ``--decoder-arg`` (for ``tide eval``)."""
    group = parser.add_argument_group("decoding strategy")
    group.add_argument("--decoder", default=DEFAULT_DECODER,
                       help="registered decoder: one_per_step (paper, default) | threshold | fixed_k | a plugin's")
    group.add_argument("--threshold", type=float, default=None, help="confidence tau of --decoder threshold")
    group.add_argument("--k", type=int, default=None, help="tokens per call of --decoder fixed_k")
    group.add_argument("--decoder-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="another option of the decoder (repeatable)")


def decoder_model_args(args: argparse.Namespace) -> dict[str, Any]:
    """``tide_bd3lm`` model arguments from the flags; the decoder and its options are
    checked here, so a bad name or option fails before any model is loaded."""
    options = parse_decoder_args(args.decoder_arg)
    if args.threshold is not None:
        options["threshold"] = args.threshold
    if args.k is not None:
        options["k"] = args.k
    try:
        get_decoder(args.decoder, **options)
    except KeyError as exc:  # an unknown name: one line, exit 2 (tide's CLI reports ValueError)
        raise ValueError(exc.args[0] if exc.args else str(exc)) from None
    return {"decoder": args.decoder, "decoder_args": options}
