"""The chunk walk of docs/method.md#chunks: per-token chunk ids from two tokenized renderings."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .bytetable import ByteTable
from .encode import SideBytes, SideEncoding, side_bytes

# the chunk walk


@dataclass
class ChunkAlignment:
    """Result of :func:`align_chunks` (before truncation).

    :ivar student_chunk_ids: ``[L_S]`` int64, chunk of each student token, ``-1`` = none.
    :ivar teacher_chunk_ids: ``[L_T]`` int64.
    :ivar num_chunks: ``C``; chunk ids are ``0..C-1`` in text order.
    :ivar student_last: ``[C]`` index of each chunk's last student token.
    :ivar teacher_last: ``[C]`` index of each chunk's last teacher token.
    :ivar chunk_bytes: ``[C]`` bytes spelled by each chunk.
    :ivar student_side: the student's :class:`~tide_plugin.alignment.encode.SideBytes`
        (token byte ranges, encoded bytes, each content's span).
    :ivar teacher_side: the teacher's.
    :ivar stats: ``content_bytes``, ``covered_bytes``, ``unmatched_messages``,
        ``normalised_differ_messages``.
    """

    student_chunk_ids: np.ndarray
    teacher_chunk_ids: np.ndarray
    num_chunks: int
    student_last: np.ndarray
    teacher_last: np.ndarray
    chunk_bytes: np.ndarray
    student_side: SideBytes
    teacher_side: SideBytes
    stats: dict[str, float]


def _assign(starts: np.ndarray, ends: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """Chunk id per token given the chunks' byte ranges ``[c0, c1)`` (sorted, disjoint)."""
    if c0.size == 0:
        return np.full(starts.shape, -1, dtype=np.int64)
    j = np.searchsorted(c0, starts, side="right") - 1
    jc = np.clip(j, 0, None)
    ok = (j >= 0) & (ends > starts) & (ends <= c1[jc])
    return np.where(ok, j, -1)


def _lead_tokens(side: SideBytes, pos: list[int], floor: list[int]) -> tuple[list[int], list[int]]:
    """Tokens that hold the template's space and the first bytes of a content (docs/method.md#chunks,
    last paragraph: ``▁Hi`` after ``[INST]``, ``ĠHi`` after a newline): the token starts
    one byte before the content start ``pos``, that byte is a space that belongs to no
    earlier content (it lies at or after ``floor``, the end of the previous content),
    and the token starts right there. Returns ``(token indices, content starts)``.
    The space test runs first in Python: most content starts fail it."""
    encoded = side.encoded
    cand = [p for p, lo in zip(pos, floor) if p >= 1 and p - 1 >= lo and encoded[p - 1] == 0x20]
    if not cand:
        return [], []
    at = np.asarray(cand, dtype=np.int64)
    i = side.ends.searchsorted(at, "right")  # first token ending after each content start
    ok = i < side.ids.size
    i, at = i[ok], at[ok]
    ok = side.starts[i] == at - 1
    return i[ok].tolist(), at[ok].tolist()


def align_chunks(
    student_table: ByteTable,
    teacher_table: ByteTable,
    student: SideEncoding,
    teacher: SideEncoding,
    contents: Sequence[str],
    aligned: Sequence[bool] | None = None,
) -> ChunkAlignment:
    """The alignment step of docs/method.md#chunks: from two tokenized renderings to per-token chunk ids.

    :param contents: the messages' contents, in conversation order.
    :param aligned: per message, whether its content is chunked (default: all).
    """
    if aligned is None:
        aligned = [True] * len(contents)
    s_content = [student_table.encode_text(c) for c in contents]
    t_content = [teacher_table.encode_text(c) for c in contents]
    S = side_bytes(student_table, student, s_content)
    T = side_bytes(teacher_table, teacher, t_content)
    ps: list[int] = []
    pt: list[int] = []
    nn: list[int] = []
    heads: tuple[list[int], list[int], list[int], list[int]] = ([], [], [], [])  # content starts, floors
    floor_s = floor_t = 0
    content_bytes = unmatched = differing = 0
    for k, use in enumerate(aligned):
        a, b = S.spans[k], T.spans[k]
        if use:
            content_bytes += len(s_content[k])
            if a is None or b is None:
                unmatched += 1
            elif s_content[k] == t_content[k]:
                if s_content[k]:
                    ps.append(a[0]), pt.append(b[0]), nn.append(len(s_content[k]))
                    heads[0].append(a[0]), heads[1].append(floor_s), heads[2].append(b[0]), heads[3].append(floor_t)
            else:
                differing += 1  # the normalisers disagree: chunk only the runs equal on both sides
                matcher = difflib.SequenceMatcher(None, s_content[k], t_content[k], autojunk=False)
                for i, j, size in matcher.get_matching_blocks():
                    if size:
                        ps.append(a[0] + i), pt.append(b[0] + j), nn.append(size)
                        if i == 0:
                            heads[0].append(a[0]), heads[1].append(floor_s)
                        if j == 0:
                            heads[2].append(b[0]), heads[3].append(floor_t)
        floor_s = a[1] if a is not None else floor_s
        floor_t = b[1] if b is not None else floor_t
    stats = {"content_bytes": float(content_bytes), "unmatched_messages": float(unmatched),
             "normalised_differ_messages": float(differing)}
    empty = np.zeros(0, dtype=np.int64)
    if not nn:
        return ChunkAlignment(
            np.full(S.ids.shape, -1, dtype=np.int64), np.full(T.ids.shape, -1, dtype=np.int64), 0,
            empty, empty, empty, S, T, {**stats, "covered_bytes": 0.0},
        )
    p_s, p_t, n = np.asarray(ps, np.int64), np.asarray(pt, np.int64), np.asarray(nn, np.int64)
    # Every byte position 0..n_k of every span pair, laid end to end: span k occupies
    # [g[k], g[k] + n[k]] of this walk; idx_s / idx_t are the positions in each side's bytes.
    m = n + 1
    g = np.concatenate(([0], np.cumsum(m)[:-1]))
    walk = np.arange(int(m.sum()), dtype=np.int64)
    rel = walk - np.repeat(g, m)
    idx_s = np.repeat(p_s, m) + rel
    idx_t = np.repeat(p_t, m) + rel
    # token boundaries of each side as a byte mask; a chunk closes wherever both have one
    bound_s = np.zeros(S.encoded_len + 1, dtype=bool)
    bound_s[S.ends] = True
    bound_s[0] = True
    bound_t = np.zeros(T.encoded_len + 1, dtype=bool)
    bound_t[T.ends] = True
    bound_t[0] = True
    # a token holding the template's space and the content's first bytes may open a chunk there
    lead_s, at_s = _lead_tokens(S, heads[0], heads[1])
    lead_t, at_t = _lead_tokens(T, heads[2], heads[3])
    bound_s[at_s] = True
    bound_t[at_t] = True
    starts_s, starts_t = S.starts, T.starts
    if lead_s:
        starts_s = starts_s.copy()
        starts_s[lead_s] = at_s
    if lead_t:
        starts_t = starts_t.copy()
        starts_t[lead_t] = at_t
    common = np.flatnonzero(bound_s[idx_s] & bound_t[idx_t])
    span = np.searchsorted(g, common, side="right") - 1
    keep = span[:-1] == span[1:]
    a, b = common[:-1][keep], common[1:][keep]
    s0, s1, t0, t1 = idx_s[a], idx_s[b], idx_t[a], idx_t[b]
    s_ids = _assign(starts_s, S.ends, s0, s1)
    t_ids = _assign(starts_t, T.ends, t0, t1)
    sizes = s1 - s0
    stats["covered_bytes"] = float(sizes.sum())
    return ChunkAlignment(
        student_chunk_ids=s_ids,
        teacher_chunk_ids=t_ids,
        num_chunks=int(sizes.size),
        student_last=np.searchsorted(S.ends, s1, side="left"),
        teacher_last=np.searchsorted(T.ends, t1, side="left"),
        chunk_bytes=sizes,
        student_side=S,
        teacher_side=T,
        stats=stats,
    )
