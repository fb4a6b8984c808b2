"""Building the vocabulary projection ``W`` ``[V_T, V_S]`` from two tokenizers
(``docs/method.md#projected-kl``), its coverage report, and finding it for a run.

The rule (:data:`RULE`), per teacher token ``u``:

- **Bytes.** ``u`` and every student token are read as the bytes they spell, from the
  byte tables the aligners use (:func:`~tide_plugin.alignment.bytetable.byte_table`):
  SentencePiece ``▁`` and byte-level ``Ġ`` both become the space byte (a teacher
  ``▁word`` and a student ``Ġword`` both spell ``b" word"``), a byte-fallback piece
  ``<0xE2>`` is the byte ``0xE2``, added tokens spell their text.
- **Longest prefix.** ``u`` maps to the longest student token whose bytes are a prefix
  of ``u``'s bytes, with weight 1: every row is one-hot (or empty). When several student
  tokens spell the same bytes (SentencePiece's ``▁`` and ``<0x20>``), the one of the same
  kind as ``u`` (regular, byte-fallback or added) wins, else a regular piece, then an
  added one, then a byte-fallback one, then the lowest id; so identical tokenizers give
  the identity on every non-special token.
- **Special tokens** map by role: the teacher's EOS to the student's EOS, its BOS to the
  student's BOS, when the student has one. Every other special token (pad, mask, unk,
  chat markers) gets an empty row: its probability mass is dropped (the objective
  reports the mass it keeps).
- **Empty rows** also for a token that spells no bytes, and for one whose first byte
  no student token begins with (never for byte-level or byte-fallback students).

Why one-hot rather than spreading a row over every student token that is a prefix
of ``u`` (``" t"``, ``" th"``, ``" the"`` for ``" the"``): at the first position of a
chunk both models start the same text. Whenever the teacher would write ``u`` there,
the student writes one definite first token. A tokenizer takes long pieces first, and
the longest prefix is that token unless the next token's bytes extend it. Mapping
each ``u`` to it makes ``Q = P_T W`` the teacher's probability of each
student first token: the teacher's mass is summed, never diluted. Spreading would
put target mass on short pieces such as ``" t"``, which the student never writes
before ``"he"``. The student would be trained to prefer them, and the target would
blur for no gain in coverage: the longest prefix exists whenever any prefix does.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bytetable import ByteTable, byte_table
from .metadata import tokenizer_fingerprint
from .projection import PROJECTION_FILE, VocabProjection

__all__ = [
    "RULE",
    "build_projection",
    "format_projection_report",
    "load_projection",
    "projection_fingerprint",
    "projection_for_run",
    "projection_report",
]

RULE = "longest-byte-prefix/1"
"""The building rule and its version: part of every fingerprint, so a ``W`` saved under
an older rule is refused rather than used."""
SPECIAL_ROLES = ("eos_token_id", "bos_token_id")
"""Special tokens mapped to the student's token of the same role, in this order of
precedence (a teacher whose pad is its EOS maps it as EOS)."""

_BYTE_FALLBACK = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
_REGULAR, _ADDED, _FALLBACK = 0, 1, 2  # token kinds, in order of preference


def projection_fingerprint(teacher_tok: Any, student_tok: Any) -> str:
    """``"sha256:<16 hex>"`` of :data:`RULE` and both tokenizers' vocabulary fingerprints
    (:func:`~tide_plugin.alignment.metadata.tokenizer_fingerprint`)."""
    key = f"{RULE}\nteacher {tokenizer_fingerprint(teacher_tok)}\nstudent {tokenizer_fingerprint(student_tok)}\n"
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _kinds(tok: Any, table: ByteTable) -> np.ndarray:
    """``[V]`` int8: regular piece, added token, or byte-fallback piece (``<0xNN>``)."""
    kinds = np.where(table.added, _ADDED, _REGULAR).astype(np.int8)
    if table.kind == "metaspace":
        ones = [int(i) for i in np.flatnonzero((table.lengths == 1) & ~table.added)]
        for i, text in zip(ones, tok.convert_ids_to_tokens(ones)):
            if text is not None and _BYTE_FALLBACK.match(text):
                kinds[i] = _FALLBACK
    return kinds


def _student_index(table: ByteTable, kinds: np.ndarray) -> tuple[dict[bytes, int], dict[tuple[bytes, int], int]]:
    """``bytes -> preferred student id`` and ``(bytes, kind) -> lowest id of that kind``."""
    best: dict[bytes, int] = {}
    by_kind: dict[tuple[bytes, int], int] = {}
    order = np.lexsort((np.arange(table.size), kinds))  # by kind, then id: the first seen wins
    for i in order.tolist():
        piece = table.pieces[i]
        if not piece or table.special[i]:
            continue
        best.setdefault(piece, i)
        by_kind.setdefault((piece, int(kinds[i])), i)
    return best, by_kind


def build_projection(teacher_tok: Any, student_tok: Any) -> VocabProjection:
    """``W`` ``[len(teacher_tok), len(student_tok)]`` by the rule of this module's docstring
    (one-hot rows, empty rows for dropped tokens), with its fingerprint.

    :param teacher_tok: the teacher's fast tokenizer (byte-level BPE or SentencePiece-style).
    :param student_tok: the student's.
    """
    t_table, s_table = byte_table(teacher_tok), byte_table(student_tok)
    t_kinds, s_kinds = _kinds(teacher_tok, t_table), _kinds(student_tok, s_table)
    best, by_kind = _student_index(s_table, s_kinds)
    lengths = sorted({len(b) for b in best}, reverse=True)
    target = np.full(t_table.size, -1, dtype=np.int64)
    for u in range(t_table.size):
        piece = t_table.pieces[u]
        if not piece or t_table.special[u]:
            continue
        exact = by_kind.get((piece, int(t_kinds[u])))
        if exact is not None:
            target[u] = exact
            continue
        n = len(piece)
        for k in lengths:
            if k <= n and (found := best.get(piece[:k] if k < n else piece)) is not None:
                target[u] = found
                break
    for role in reversed(SPECIAL_ROLES):  # the first role wins where two share an id
        t_id, s_id = getattr(teacher_tok, role, None), getattr(student_tok, role, None)
        if t_id is not None and s_id is not None and 0 <= t_id < t_table.size and 0 <= s_id < s_table.size:
            target[int(t_id)] = int(s_id)
    mapped = target >= 0
    indptr = np.zeros(t_table.size + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(mapped)
    indices = torch.from_numpy(target[mapped].copy())
    return VocabProjection(
        indptr=torch.from_numpy(indptr),
        indices=indices,
        values=torch.ones(indices.numel(), dtype=torch.float32),
        student_vocab_size=s_table.size,
        fingerprint=projection_fingerprint(teacher_tok, student_tok),
    )


def projection_report(w: VocabProjection, teacher_tok: Any, student_tok: Any) -> dict[str, Any]:
    """``W``'s row coverage over the teacher vocabulary.

    :return: ``{"rule", "fingerprint", "shape", "teacher_rows", "mapped_rows",
        "row_coverage" (mapped / teacher rows), "exact_rows" (the student token spells
        the whole teacher token), "special_mapped", "empty_rows": {"special",
        "no_bytes", "no_student_prefix", "beyond_tokenizer"}}``. ``beyond_tokenizer``
        counts rows padded for a model's output layer (:meth:`VocabProjection.padded`).
    """
    t_table, s_table = byte_table(teacher_tok), byte_table(student_tok)
    counts = (w.indptr[1:] - w.indptr[:-1]).cpu().numpy()
    nonempty = counts > 0
    n = min(t_table.size, w.teacher_vocab_size)
    has = nonempty[:n]
    special = t_table.special[:n]
    no_bytes = (t_table.lengths[:n] == 0) & ~special
    starts = w.indptr[:-1].cpu().numpy()[:n]
    cols = w.indices.cpu().numpy()
    exact = 0
    for u in np.flatnonzero(has & ~special).tolist():
        if counts[u] == 1 and s_table.pieces[int(cols[starts[u]])] == t_table.pieces[u]:
            exact += 1
    mapped = int(nonempty.sum())
    return {
        "rule": RULE,
        "fingerprint": w.fingerprint,
        "shape": list(w.shape),
        "teacher_rows": int(w.teacher_vocab_size),
        "mapped_rows": mapped,
        "row_coverage": mapped / max(w.teacher_vocab_size, 1),  # max(1, .): an empty vocabulary
        "exact_rows": exact,
        "special_mapped": int((has & special).sum()),
        "empty_rows": {
            "special": int((~has & special).sum()),
            "no_bytes": int((~has & no_bytes).sum()),
            "no_student_prefix": int((~has & ~special & ~no_bytes).sum()),
            "beyond_tokenizer": int((~nonempty[n:]).sum()),
        },
    }


def format_projection_report(report: dict[str, Any]) -> str:
    """One line: shape, row coverage, exact rows, empty rows by reason, fingerprint."""
    empty = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in report["empty_rows"].items() if v) or "none"
    v_t, v_s = report["shape"]
    return (
        f"vocabulary projection W [{v_t} x {v_s}] ({report['rule']}): {report['row_coverage']:.2%} of teacher rows "
        f"mapped, {report['exact_rows']} to a student token of the same bytes; empty rows: {empty} "
        f"({report['fingerprint']})"
    )


def load_projection(folder: str | os.PathLike[str], teacher_tok: Any, student_tok: Any) -> VocabProjection | None:
    """The ``W`` saved in ``folder`` (``None`` when there is none), checked against the
    run's tokenizers: a ``W`` built from other tokenizers (or another rule) is refused
    with one line naming both."""
    if not (Path(folder) / PROJECTION_FILE).is_file():
        return None
    w = VocabProjection.load(folder)
    want = projection_fingerprint(teacher_tok, student_tok)
    if w.fingerprint != want:
        raise ValueError(
            f"{str(Path(folder) / PROJECTION_FILE)!r} was built for other tokenizers or another rule "
            f"(fingerprint {w.fingerprint}), not for teacher {_name(teacher_tok)!r} -> student {_name(student_tok)!r} "
            f"({want}, {RULE}); preprocess the data again with these tokenizers"
        )
    return w


def _name(tok: Any) -> str:
    return str(getattr(tok, "name_or_path", None) or type(tok).__name__)


def projection_for_run(
    teacher_tok: Any,
    student_tok: Any,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    say: Callable[[str], None] | None = print,
) -> VocabProjection:
    """A run's ``W``: loaded from ``data_dir`` (a ``tide preprocess`` folder) when it holds
    one for these tokenizers, else built now; ``say`` gets one line with its coverage."""
    start = time.perf_counter()
    w = load_projection(data_dir, teacher_tok, student_tok) if data_dir is not None else None
    how = f"loaded from {str(data_dir)!r}" if w is not None else None
    if w is None:
        w = build_projection(teacher_tok, student_tok)
        how = f"built in {time.perf_counter() - start:.1f} s"
    if say is not None:
        say(f"{format_projection_report(projection_report(w, teacher_tok, student_tok))}; {how}")
    return w
