"""Aligned training rows for both pipelines, with the same conversations in the same
order for every arm (the held-out encodings are :func:`tide_plugin.eval.heldout.encode_heldout`).

Alignment goes through the public per-conversation functions that ``tide preprocess``
maps over a dataset (:func:`~tide_plugin.alignment.chunk_alignment` for
pipeline A's cross tokenizers, :func:`~tide_plugin.alignment.template_pairs`
for pipeline B's shared vocabulary), so the study needs no ``datasets`` install; rejected
conversations and dropped chunks / pairs are counted as the preprocess report counts them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


SUMMED_STATS = (
    "chunks",
    "dropped_chunks",
    "content_bytes",
    "covered_bytes",
    "kept_bytes",
    "pairs",
    "dropped_pairs",
    "unpaired_tokens",
    "truncated_pairs",
    "student_truncated_tokens",
    "teacher_truncated_tokens",
)


@dataclass
class AlignedData:
    """``rows[pipeline]``: trainer rows (``A`` cross, ``B`` shared), index-aligned: row
    ``i`` of both is the same conversation, so every arm sees the same student data."""

    rows: dict[str, list[dict[str, Any]]]
    report: dict[str, Any] = field(default_factory=dict)


def align_study_rows(
    conversations: Sequence[dict[str, Any]],
    toks: dict[str, Any],
    *,
    max_length: int,
    teacher_max_length: int,
) -> AlignedData:
    """Align every conversation for both pipelines; keep those both accept."""
    from ..alignment import AlignmentError, PromptTooLongError, chunk_alignment, template_pairs

    kept: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    status: Counter = Counter()
    sums: dict[str, Counter] = {"A": Counter(), "B": Counter()}
    reasons: list[str] = []
    for conv in conversations:
        messages = conv["messages"]
        out = {}
        for pipe, align, teacher in (("A", chunk_alignment, toks["cross"]), ("B", template_pairs, toks["shared"])):
            try:
                ex = align(teacher, toks["student"], messages, max_length=max_length, teacher_max_length=teacher_max_length)
            except PromptTooLongError:
                status[f"{pipe}_prompt_too_long"] += 1
                break
            except AlignmentError as exc:
                status[f"{pipe}_invalid"] += 1
                if len(reasons) < 5:
                    reasons.append(f"{pipe}: {exc}")
                break
            out[pipe] = ex
        if len(out) < 2:
            continue
        if out["A"].student_ids != out["B"].student_ids:  # both render the student side the same way
            status["student_ids_differ"] += 1
            continue
        for pipe in ("A", "B"):
            kept[pipe].append(out[pipe].to_row())
            sums[pipe].update({k: v for k, v in out[pipe].stats.items() if k in SUMMED_STATS})
    a = sums["A"]
    report = {
        "conversations": len(conversations),
        "kept": len(kept["A"]),
        "discarded": dict(status),
        "first_reasons": reasons,
        "A": dict(a),
        "B": dict(sums["B"]),
        "A_chunk_coverage": (a["kept_bytes"] / a["content_bytes"]) if a["content_bytes"] else 0.0,
    }
    return AlignedData(rows=kept, report=report)

