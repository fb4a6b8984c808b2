"""What ``tide preprocess`` kept and dropped (:class:`PreprocessReport`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class PreprocessReport:
    """What preprocessing kept and what it dropped, summed over the rows.

    ``discarded_prompt_too_long``: the prompt fills ``max_length`` (no target
    token left). ``discarded_unrenderable``: a chat template cannot render the
    conversation (a ``tool`` role, say). ``discarded_invalid``: the aligner rejected the conversation
    (``reasons`` holds the first few messages). ``totals`` sums the aligner's
    per-example stats over the kept rows (``chunks``, ``dropped_chunks``,
    ``content_bytes``, ``covered_bytes``, ``pairs``, ``dropped_pairs``,
    ``student_truncated_tokens``, ``teacher_truncated_tokens`` (the teacher is cut
    after its last chunk / pair, docs/method.md#template-alignment, docs/method.md#chunks), ...). ``truncated_examples``: kept
    examples cut at ``max_length``.
    """

    pipeline: str
    rows_in: int = 0
    rows_kept: int = 0
    discarded_prompt_too_long: int = 0
    discarded_unrenderable: int = 0
    discarded_invalid: int = 0
    student_tokens: int = 0
    teacher_tokens: int = 0
    target_tokens: int = 0
    truncated_examples: int = 0
    totals: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    @property
    def chunk_coverage(self) -> float:
        """Fraction of aligned content bytes that lie in a chunk (before truncation)."""
        return self.totals.get("covered_bytes", 0.0) / max(self.totals.get("content_bytes", 0.0), 1.0)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.pipeline == "cross":
            out["chunk_coverage"] = self.chunk_coverage
        return out

    def format(self) -> str:
        t = self.totals
        lines = [
            f"tide preprocess ({self.pipeline} pipeline)",
            f"  rows in:                         {self.rows_in}",
            f"  rows kept:                       {self.rows_kept}",
            f"  discarded, prompt fills length:  {self.discarded_prompt_too_long}",
            f"  discarded, template cannot render: {self.discarded_unrenderable}",
            f"  discarded, alignment failed:     {self.discarded_invalid}",
            f"  student tokens / targets:        {self.student_tokens} / {self.target_tokens}",
            f"  teacher tokens:                  {self.teacher_tokens}",
            f"  examples cut at max_length:      {self.truncated_examples} "
            f"({int(t.get('student_truncated_tokens', 0))} student tokens cut)",
        ]
        if self.pipeline != "same":  # there the teacher reads the student's ids
            lines.append(f"  teacher tokens cut after the last {'chunk' if self.pipeline == 'cross' else 'pair'} / at "
                         f"the cap: {int(t.get('teacher_truncated_tokens', 0))}")
        if self.pipeline == "cross":
            lines += [
                f"  chunks kept:                     {int(t.get('chunks', 0))}",
                f"  chunk coverage:                  {int(t.get('covered_bytes', 0))} / {int(t.get('content_bytes', 0))} "
                f"content bytes ({100 * self.chunk_coverage:.2f}%)",
                f"  chunks dropped by truncation:    {int(t.get('dropped_chunks', 0))} "
                f"(student cut {int(t.get('dropped_chunks_student_cut', 0))}, "
                f"teacher cap {int(t.get('dropped_chunks_teacher_cap', 0))})",
                f"  unmatched messages:              {int(t.get('unmatched_messages', 0))}",
            ]
        elif self.pipeline == "shared":
            lines += [
                f"  pairs kept:                      {int(t.get('pairs', 0))}",
                f"  dropped pairs (ids differ):      {int(t.get('dropped_pairs', 0))}",
                f"  pairs dropped by truncation:     {int(t.get('truncated_pairs', 0))}",
                f"  unpaired content tokens:         {int(t.get('unpaired_tokens', 0))}",
                f"  unmatched messages:              {int(t.get('unmatched_messages', 0))}",
            ]
        for r in self.reasons:
            lines.append(f"  e.g. discarded: {r}")
        return "\n".join(lines)
