"""The ``datasets.map`` function of ``tide preprocess``: one batch of conversations ->
aligned rows plus a status, a reason and the aligner's stats per row (private
columns that :func:`summarise` turns into the :class:`PreprocessReport`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..pipelines import IGNORE_INDEX, ROW_LABELS, ROW_STUDENT_IDS, ROW_TEACHER_IDS, get_pipeline
from .aligners import CHUNK_STATS, PAIR_STATS, SAME_STATS, chunk_alignment, same_tokens, template_pairs
from .checks import AlignmentError, PromptTooLongError, UnrenderableError
from .report import PreprocessReport

ALIGNERS = {
    "cross": (chunk_alignment, CHUNK_STATS),
    "shared": (template_pairs, PAIR_STATS),
    "same": (same_tokens, SAME_STATS),
}
"""Per pipeline: the aligner (``same``: the student's ids and labels) and the stats it reports."""
STATUS, ERROR, STAT_PREFIX = "_status", "_error", "_stat_"
_MAX_REASONS = 5


class Aligner:
    """Picklable ``datasets.map`` function (batched)."""

    def __init__(self, pipeline: str, teacher_tokenizer: Any, student_tokenizer: Any, roles: Sequence[str] | None,
                 max_length: int | None, teacher_max_length: int | None, targets: str):
        self.pipeline = pipeline
        self.teacher_tokenizer = teacher_tokenizer
        self.student_tokenizer = student_tokenizer
        self.options = {"roles": roles, "max_length": max_length, "teacher_max_length": teacher_max_length,
                        "targets": targets}
        self.align, self.stat_names = ALIGNERS[pipeline]
        strategy = get_pipeline(pipeline)
        self.keys, self.scalar_keys = strategy.written_keys, strategy.scalar_keys

    def __call__(self, batch: Mapping[str, list]) -> dict[str, list]:
        out: dict[str, list] = {k: [] for k in (*self.keys, STATUS, ERROR)}
        for name in self.stat_names:
            out[STAT_PREFIX + name] = []
        for messages in batch["messages"]:
            status, error, row, stats = "ok", "", None, {}
            try:
                ex = self.align(self.teacher_tokenizer, self.student_tokenizer, messages, **self.options)
                row, stats = ex.to_row(), ex.stats
            except PromptTooLongError as exc:
                status, error = "prompt_too_long", str(exc)
            except UnrenderableError as exc:
                status, error = "unrenderable", str(exc)
            except AlignmentError as exc:
                status, error = "invalid", str(exc)
            for k in self.keys:
                out[k].append(row[k] if row is not None else (0 if k in self.scalar_keys else []))
            out[STATUS].append(status)
            out[ERROR].append(error)
            for name in self.stat_names:
                out[STAT_PREFIX + name].append(float(stats.get(name, 0.0)))
        return out


def features(pipeline: str) -> Any:
    """The ``datasets.Features`` of the mapped rows of ``pipeline``."""
    from datasets import Features, Sequence as Seq, Value

    strategy = get_pipeline(pipeline)
    feats = {k: Value("int32") if k in strategy.scalar_keys else Seq(Value("int32")) for k in strategy.written_keys}
    feats[STATUS] = Value("string")
    feats[ERROR] = Value("string")
    for name in ALIGNERS[pipeline][1]:
        feats[STAT_PREFIX + name] = Value("float64")
    return Features(feats)


def summarise(mapped: Any, pipeline: str) -> PreprocessReport:
    """The report of the mapped rows (before the discarded ones are dropped)."""
    status = mapped[STATUS]
    ok = [s == "ok" for s in status]
    rep = PreprocessReport(pipeline=pipeline, rows_in=len(status), rows_kept=sum(ok))
    rep.discarded_prompt_too_long = status.count("prompt_too_long")
    rep.discarded_unrenderable = status.count("unrenderable")
    rep.discarded_invalid = status.count("invalid")
    rep.reasons = [e for s, e in zip(status, mapped[ERROR]) if s != "ok"][:_MAX_REASONS]
    for c in mapped.column_names:
        if c.startswith(STAT_PREFIX):
            rep.totals[c[len(STAT_PREFIX) :]] = float(sum(v for v, k in zip(mapped[c], ok) if k))
    rep.student_tokens = sum(len(x) for x in mapped[ROW_STUDENT_IDS])
    rep.teacher_tokens = sum(len(x) for x in mapped[ROW_TEACHER_IDS if ROW_TEACHER_IDS in mapped.column_names
                                                   else ROW_STUDENT_IDS])
    rep.target_tokens = sum(sum(1 for v in lab if v != IGNORE_INDEX) for lab in mapped[ROW_LABELS])
    rep.truncated_examples = sum(1 for v, k in zip(mapped[STAT_PREFIX + "student_truncated_tokens"], ok) if k and v > 0)
    return rep
