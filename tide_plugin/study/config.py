"""The study's configuration and its size presets (``quick``, ``default``, ``gpu``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..hookspecs import DEFAULT_BLOCK_SIZE
from .arms import ARMS, DEFAULT_ARMS, check_arm
from .corpus import CorpusConfig
from .models import ModelSpec
from .teachers import TrainSchedule

TOKENIZER_KINDS = ("trained", "real")


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study run depends on (artifacts are cached by hashes of parts of it).

    :param steps: optimizer steps of every arm (``BD3LM (equal compute)`` gets the
        distilled arms' mean compute instead: CPU time on a CPU, wall-clock on a GPU).
    :param eval_samples: Monte Carlo times per held-out sequence for the final scores.
    :param curve_rows: held-out sequences scored every ``eval_every`` steps (the plot).
    """

    corpus: CorpusConfig = field(default_factory=lambda: CorpusConfig(max_heldout_rows=300))
    tokenizers: str = "trained"
    student_vocab: int = 2048
    cross_vocab: int = 2048
    student: ModelSpec = field(default_factory=ModelSpec)
    teacher_a: ModelSpec = field(
        default_factory=lambda: ModelSpec("qwen3_moe", hidden=192, layers=4, heads=6, kv_heads=2, intermediate=192, experts=8)
    )
    teacher_b: ModelSpec = field(
        default_factory=lambda: ModelSpec("qwen3", hidden=192, layers=6, heads=6, kv_heads=2, intermediate=576)
    )
    teacher_schedule: TrainSchedule = field(
        default_factory=lambda: TrainSchedule(
            steps=6000, batch_size=64, lr=2e-3, warmup=200, weight_decay=0.1, max_length=256, validate_every=250
        )
    )
    init_schedule: TrainSchedule = field(
        default_factory=lambda: TrainSchedule(steps=150, batch_size=16, lr=2e-3, warmup=10, max_length=192)
    )
    steps: int = 150
    batch_size: int = 16
    lr: float = 1e-3
    max_length: int = 192
    teacher_max_length: int = 256
    block_size: int = DEFAULT_BLOCK_SIZE
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] = DEFAULT_ARMS
    eval_samples: int = 4
    eval_seed: int = 1234
    curve_rows: int = 48
    eval_every: int = 25
    max_equal_compute_factor: float = 8.0

    def __post_init__(self) -> None:
        if self.tokenizers not in TOKENIZER_KINDS:
            raise ValueError(f"tokenizers {self.tokenizers!r} is not one of {TOKENIZER_KINDS}")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            import difflib

            def said(a: str) -> str:
                close = difflib.get_close_matches(a, list(ARMS), n=1)
                return f"{a!r} (did you mean {close[0]!r}?)" if close else repr(a)

            raise ValueError(f"unknown arms {', '.join(map(said, unknown))}; allowed: {list(ARMS)}")
        for arm in self.arms:
            check_arm(arm)  # its objective and options exist here, before any work
        if "BD3LM" not in self.arms:
            raise ValueError("the arms must include 'BD3LM' (every difference is taken against it)")
        if len(self.seeds) < 1 or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds {self.seeds} must be distinct and at least one")
        for name in ("steps", "batch_size", "max_length", "teacher_max_length", "block_size", "eval_samples"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} {getattr(self, name)} must be a positive int")
        if self.max_length % self.block_size:
            raise ValueError(f"max_length {self.max_length} must be a multiple of block_size {self.block_size}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> StudyConfig:
        return dataclasses.replace(self, **changes)


def _quick() -> StudyConfig:
    tiny = ModelSpec("qwen3", hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64)
    return StudyConfig(
        corpus=CorpusConfig(max_train_rows=800, max_heldout_rows=48),
        student_vocab=512,
        cross_vocab=512,
        student=tiny,
        teacher_a=ModelSpec("qwen3_moe", hidden=64, layers=2, heads=4, kv_heads=2, intermediate=64, experts=4),
        teacher_b=ModelSpec("qwen3", hidden=64, layers=3, heads=4, kv_heads=2, intermediate=192),
        teacher_schedule=TrainSchedule(steps=300, batch_size=16, lr=3e-3, warmup=20, weight_decay=0.1, max_length=256,
                                       validate_every=100),
        init_schedule=TrainSchedule(steps=40, batch_size=16, lr=3e-3, warmup=4, max_length=192),
        steps=30,
        seeds=(0, 1, 2),
        eval_samples=2,
        curve_rows=16,
        eval_every=10,
    )


def _gpu() -> StudyConfig:
    return StudyConfig(steps=400, seeds=(0, 1, 2, 3, 4), eval_samples=8, curve_rows=96, eval_every=50)


def _smoke() -> StudyConfig:
    """Seconds, not minutes: the test suite's end-to-end check (numbers mean nothing)."""
    tiny = ModelSpec("qwen3", hidden=32, layers=1, heads=4, kv_heads=2, intermediate=32)
    return StudyConfig(
        corpus=CorpusConfig(packages=("json", "http", "urllib"), sources=("code",), heldout_permille=300,
                            max_train_rows=48, max_heldout_rows=6, max_prompt_chars=120, max_response_chars=160),
        student_vocab=300,
        cross_vocab=300,
        student=tiny,
        teacher_a=ModelSpec("qwen3_moe", hidden=32, layers=1, heads=4, kv_heads=2, intermediate=32, experts=2,
                            experts_per_token=1),
        teacher_b=tiny,
        teacher_schedule=TrainSchedule(steps=4, batch_size=4, warmup=1, max_length=96, validate_every=2),
        init_schedule=TrainSchedule(steps=2, batch_size=4, warmup=1, max_length=64),
        steps=3,
        batch_size=4,
        max_length=96,
        teacher_max_length=128,
        seeds=(0, 1),
        arms=("BD3LM", "B/TIDE-Shared", "A/TIDE-Cross", "BD3LM (equal compute)"),
        eval_samples=1,
        curve_rows=2,
        eval_every=3,
    )


PRESETS = {"smoke": _smoke, "quick": _quick, "default": StudyConfig, "gpu": _gpu}


def preset(name: str) -> StudyConfig:
    if name not in PRESETS:
        raise ValueError(f"study size {name!r} is not one of {sorted(PRESETS)}")
    return PRESETS[name]()
