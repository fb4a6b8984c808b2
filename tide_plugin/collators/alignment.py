"""Alignment of student and teacher tokens of one conversation (SPEC 3.2, 3.3).

Two aligners turn a chat conversation (``[{"role": ..., "content": ...}, ...]``)
into an unpadded :class:`tide_plugin.batch.AlignedExample`:

* :func:`chunk_alignment` (different tokenizers, SPEC 3.3): per-token chunk ids
  such that every chunk's teacher tokens and student tokens spell exactly the
  same bytes.
* :func:`template_pairs` (shared vocabulary, different chat templates, SPEC
  3.2): ``(student_pos, teacher_pos)`` pairs of content tokens with equal ids.

How text is compared. Each side renders the conversation with its own chat
template and tokenizes it (fast tokenizer, offsets). The *encoded bytes* ``E``
of a side are the concatenation of its tokens' bytes from a per-vocabulary
:class:`ByteTable`: byte-level BPE characters (``Ġ`` ...) are mapped back to
bytes, SentencePiece ``▁`` to a space and byte-fallback pieces ``<0xNN>`` to
their byte; special tokens have no bytes; the dummy-prefix ``▁`` that
SentencePiece adds at the start of each text segment is removed. ``E`` is the
text each side actually encodes (after its normaliser, e.g. NFC for Qwen).
Each message's content, passed through the side's normaliser, is searched in
``E`` forward from the previous match (starting no earlier than the token that
holds the content's first character in the rendering). Inside each pair of
content ranges the two token sequences are walked with cumulative byte lengths
(numpy byte masks): every byte position that is a token boundary on both sides closes a
chunk. Where the two sides' normalisers make the content differ (a non-NFC
string under Qwen's NFC), only the byte runs that are equal on both sides
(``difflib`` matching blocks) are chunked, so a chunk never spells different
bytes on the two sides. Bytes at the edge of a content range that share a token
with template text (``"[INST] hi"`` -> ``▁hi``) belong to no chunk.

Labels (student side): ``-100`` everywhere except on tokens that overlap the
content of an ``assistant`` message, and on the end-of-turn token right after
it (the first token after the content, when it is the EOS token or a special
token whose text contains ``end`` / ``eot``: ``<|im_end|>``, ``</s>``).
"""

from __future__ import annotations

import bisect
import difflib
import json
import re
import unicodedata
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np

from ..batch import AlignedExample
from ..offline import bytes_to_unicode

__all__ = [
    "DEFAULT_TEACHER_MAX_LENGTH",
    "IGNORE_INDEX",
    "AlignmentError",
    "ByteTable",
    "ChunkAlignment",
    "PromptTooLongError",
    "SideEncoding",
    "align_chunks",
    "chunk_alignment",
    "encode_side",
    "resolve_mask_id",
    "template_pairs",
]

IGNORE_INDEX = -100
DEFAULT_TEACHER_MAX_LENGTH = 1024
"""The reference's teacher length cap (``max_teacher_length``); the aligners take
``teacher_max_length=None`` as "no cap", preprocessing passes this value."""


class AlignmentError(ValueError):
    """A conversation or tokenizer the aligners cannot use (the message names it)."""


class PromptTooLongError(AlignmentError):
    """The prompt fills ``max_length``: no target token is left after truncation.
    Preprocessing counts such examples as discarded."""


# ---------------------------------------------------------------------------------------------
# validation helpers


def _tokenizer_name(tok: Any) -> str:
    return getattr(tok, "name_or_path", None) or type(tok).__name__


def _require_fast(tok: Any, side: str) -> None:
    if not getattr(tok, "is_fast", False) or not hasattr(tok, "backend_tokenizer"):
        raise AlignmentError(
            f"{side} tokenizer {_tokenizer_name(tok)!r} ({type(tok).__name__}) is a slow tokenizer without "
            "offsets; alignment needs a fast tokenizer (transformers PreTrainedTokenizerFast), e.g. "
            "AutoTokenizer.from_pretrained(..., use_fast=True) or tide_plugin.offline.tokenizer(name)"
        )


def resolve_mask_id(tokenizer: Any, mask_id: int | None = None) -> int:
    """The mask id to use with ``tokenizer``: ``mask_id`` when given (checked to be a
    valid id), else the tokenizer's ``mask_token_id``.

    :raises ValueError: ``mask_id`` out of range, or no mask id given and the
        tokenizer has no mask token.
    """
    size = len(tokenizer)
    if mask_id is not None:
        if isinstance(mask_id, bool) or not isinstance(mask_id, (int, np.integer)) or not 0 <= int(mask_id) < size:
            raise ValueError(
                f"mask_id {mask_id!r} is not a valid id for tokenizer {_tokenizer_name(tokenizer)!r} "
                f"(allowed: an int in [0, {size}))"
            )
        return int(mask_id)
    found = getattr(tokenizer, "mask_token_id", None)
    if found is None:
        raise ValueError(
            f"tokenizer {_tokenizer_name(tokenizer)!r} has no mask token; pass mask_id=<int> explicitly "
            "(e.g. the teacher's mask id from its config) or add one with "
            "tokenizer.add_special_tokens({'mask_token': '<|mask|>'})"
        )
    return int(found)


def _check_messages(messages: Any) -> list[Mapping[str, Any]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise AlignmentError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    if len(messages) == 0:
        raise AlignmentError("empty conversation: messages must hold at least one {'role', 'content'} dict")
    for k, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise AlignmentError(
                f"message {k} must be a dict with str 'role' and str 'content', got {m!r:.200}"
            )
    return list(messages)


def _check_roles(messages: Sequence[Mapping[str, Any]], roles: Sequence[str] | None) -> list[bool]:
    present = [m["role"] for m in messages]
    if roles is None:
        return [True] * len(messages)
    if isinstance(roles, str):
        roles = (roles,)
    wanted = set(roles)
    if not wanted.intersection(present):
        raise AlignmentError(
            f"conversation has no message with a role in roles={sorted(wanted)}; roles present: {sorted(set(present))}"
        )
    return [r in wanted for r in present]


def _check_length(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


# ---------------------------------------------------------------------------------------------
# per-vocabulary byte tables

_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's printable character -> byte (the inverse of GPT-2's map)."""
    return {c: b for b, c in bytes_to_unicode().items()}


def _state(component: Any) -> str:
    if component is None:
        return ""
    try:
        return json.dumps(json.loads(component.__getstate__()), ensure_ascii=False)
    except Exception:
        return type(component).__name__


def _unicode_form(normalizer: Any) -> str | None:
    """``"NFC"`` (etc.) when the normaliser is exactly one Unicode normal form,
    ``"identity"`` when it only writes ``▁`` for spaces (and a dummy prefix), else
    ``None`` (then every text goes through the normaliser itself)."""
    if normalizer is None:
        return "identity"
    try:
        state = json.loads(normalizer.__getstate__())
    except Exception:
        return None
    parts = state.get("normalizers", [state]) if state.get("type") == "Sequence" else [state]
    forms = [p["type"] for p in parts if p.get("type") in ("NFC", "NFD", "NFKC", "NFKD")]
    rest = [p for p in parts if p.get("type") not in ("NFC", "NFD", "NFKC", "NFKD")]
    for p in rest:
        if p.get("type") == "Prepend" and p.get("prepend") == "▁":
            continue
        if p.get("type") == "Replace" and p.get("pattern") == {"String": " "} and p.get("content") == "▁":
            continue
        return None
    if len(forms) > 1:
        return None
    return forms[0] if forms else "identity"


@dataclass(frozen=True, eq=False)
class ByteTable:
    """What each token id of one vocabulary spells, in bytes.

    :ivar pieces: ``pieces[i]`` the bytes of token ``i`` (``b""`` for special tokens).
    :ivar lengths: ``[V]`` int64, ``len(pieces[i])``.
    :ivar added: ``[V]`` bool, added tokens (matched before normalisation; they start a new text segment).
    :ivar special: ``[V]`` bool, special tokens (no bytes, no chunk).
    :ivar starts_space: ``[V]`` bool, the piece starts with a space byte.
    :ivar kind: ``"byte_level"`` (``Ġ`` convention) or ``"metaspace"`` (``▁``, byte fallback).
    :ivar prepends: the tokenizer adds a dummy-prefix ``▁`` to each text segment.
    """

    pieces: tuple[bytes, ...]
    lengths: np.ndarray
    added: np.ndarray
    special: np.ndarray
    starts_space: np.ndarray
    eot: np.ndarray
    kind: str
    prepends: bool
    normalizer_prepends: bool
    normalizer: Any
    size: int
    unicode_form: str | None = None

    @classmethod
    def build(cls, tok: Any) -> ByteTable:
        backend = tok.backend_tokenizer
        size = len(tok)
        decoder, pre = _state(backend.decoder), _state(backend.pre_tokenizer)
        if "ByteLevel" in decoder or "ByteLevel" in pre:
            kind = "byte_level"
        elif "▁" in decoder or "Metaspace" in decoder or "Metaspace" in pre:
            kind = "metaspace"
        else:
            raise AlignmentError(
                f"tokenizer {_tokenizer_name(tok)!r}: unsupported token convention (decoder {decoder[:120]!r}); "
                "supported: byte-level BPE (Ġ) and SentencePiece-style (▁, byte fallback)"
            )
        tokens = tok.convert_ids_to_tokens(list(range(size)))
        added_decoder = getattr(tok, "added_tokens_decoder", {}) or {}
        special_ids = set(int(i) for i in getattr(tok, "all_special_ids", []) or [])
        added = np.zeros(size, dtype=bool)
        special = np.zeros(size, dtype=bool)
        eot = np.zeros(size, dtype=bool)
        for i, at in added_decoder.items():
            if 0 <= int(i) < size:
                added[int(i)] = True
                if getattr(at, "special", False):
                    special[int(i)] = True
        for i in special_ids:
            if 0 <= i < size:
                special[i] = True
        eos = getattr(tok, "eos_token_id", None)
        for i in np.flatnonzero(special):
            text = (tokens[i] or "").lower()
            if i == eos or "end" in text or "eot" in text:
                eot[i] = True
        pieces: list[bytes] = []
        if kind == "byte_level":
            dec = _byte_decoder()
            for i, t in enumerate(tokens):
                if t is None or special[i]:
                    pieces.append(b"")
                elif added[i]:
                    pieces.append(t.encode("utf-8"))
                else:
                    try:
                        pieces.append(bytes(dec[c] for c in t))
                    except KeyError:
                        pieces.append(t.encode("utf-8"))
        else:
            for i, t in enumerate(tokens):
                if t is None or special[i]:
                    pieces.append(b"")
                elif added[i]:
                    pieces.append(t.encode("utf-8"))
                elif (m := _BYTE_PIECE.match(t)) is not None:
                    pieces.append(bytes([int(m.group(1), 16)]))
                else:
                    pieces.append(t.replace("▁", " ").encode("utf-8"))
        lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=size)
        starts_space = np.fromiter((p[:1] == b" " for p in pieces), dtype=bool, count=size)
        normalizer = backend.normalizer
        probe = normalizer.normalize_str("a") if normalizer is not None else "a"
        normalizer_prepends = probe != "a" and probe.endswith("a") and probe[:-1] in ("▁", " ")
        prepends = normalizer_prepends
        if kind == "metaspace" and backend.pre_tokenizer is not None and not prepends:
            try:
                split = "".join(p for p, _ in backend.pre_tokenizer.pre_tokenize_str(probe))
                prepends = split.startswith("▁") and not probe.startswith("▁")
            except Exception:
                prepends = False
        return cls(
            unicode_form=_unicode_form(normalizer),
            pieces=tuple(pieces),
            lengths=lengths,
            added=added,
            special=special,
            starts_space=starts_space,
            eot=eot,
            kind=kind,
            prepends=prepends,
            normalizer_prepends=normalizer_prepends,
            normalizer=normalizer,
            size=size,
        )

    def encode_text(self, text: str) -> bytes:
        """The bytes this tokenizer encodes for ``text`` inside a longer text (its
        normaliser applied, ``▁`` read as a space, no dummy prefix)."""
        if self.normalizer is not None and text:
            form = self.unicode_form
            if form == "identity" or (form and unicodedata.is_normalized(form, text)):
                pass  # fast path: the normaliser would not change this text (``▁`` handled below)
            else:
                text = self.normalizer.normalize_str(text)
                if self.normalizer_prepends and text[:1] in ("▁", " "):
                    text = text[1:]
        if self.kind == "metaspace":
            text = text.replace("▁", " ")
        return text.encode("utf-8")

    def token_bytes(self, ids: Sequence[int]) -> bytes:
        """Concatenated bytes of ``ids`` (special tokens spell nothing)."""
        return b"".join(self.pieces[int(i)] for i in ids)


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TABLES_BY_ID: dict[int, tuple[Any, ByteTable]] = {}


def byte_table(tok: Any) -> ByteTable:
    """The cached :class:`ByteTable` of a fast tokenizer (rebuilt when its size changes)."""
    _require_fast(tok, "the")
    try:
        table = _TABLES.get(tok)
    except TypeError:
        entry = _TABLES_BY_ID.get(id(tok))
        table = entry[1] if entry is not None and entry[0] is tok else None
    if table is None or table.size != len(tok):
        table = ByteTable.build(tok)
        try:
            _TABLES[tok] = table
        except TypeError:
            _TABLES_BY_ID[id(tok)] = (tok, table)
    return table


# ---------------------------------------------------------------------------------------------
# one side: rendering, tokenization, encoded bytes

_MARK = re.compile("\ue000(\\d+)\ue001")


@dataclass
class SideEncoding:
    """One side of a conversation, tokenized.

    :ivar text: the rendered conversation (chat template applied).
    :ivar ids: token ids (no special tokens added beyond what the template writes).
    :ivar offsets: ``(start, end)`` character offsets into ``text`` per token.
    :ivar content_chars: ``(start, end)`` character span of each message's content in
        ``text``, or ``None`` when the template changes the content (then the search
        in the encoded bytes starts from the previous match only).
    """

    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]
    content_chars: list[tuple[int, int]] | None


def _render(tok: Any, messages: Sequence[Mapping[str, Any]], side: str) -> str:
    if not getattr(tok, "chat_template", None):
        raise AlignmentError(
            f"{side} tokenizer {_tokenizer_name(tok)!r} has no chat template; set tokenizer.chat_template"
        )
    text = tok.apply_chat_template(list(messages), tokenize=False)
    if not isinstance(text, str):
        raise AlignmentError(f"{side} tokenizer's apply_chat_template(tokenize=False) returned {type(text).__name__}")
    return text


def _content_chars(tok: Any, messages: Sequence[Mapping[str, Any]], text: str) -> list[tuple[int, int]] | None:
    """Exact character spans of the contents in ``text``: render once more with
    numbered markers in place of the contents and check the reconstruction."""
    marked = [{**m, "content": f"\ue000{k}\ue001"} for k, m in enumerate(messages)]
    try:
        skeleton = tok.apply_chat_template(marked, tokenize=False)
    except Exception:
        return None
    parts = _MARK.split(skeleton)
    if len(parts) != 2 * len(messages) + 1 or [int(x) for x in parts[1::2]] != list(range(len(messages))):
        return None
    spans, pos, rebuilt = [], 0, []
    for k, m in enumerate(messages):
        pos += len(parts[2 * k])
        spans.append((pos, pos + len(m["content"])))
        pos += len(m["content"])
        rebuilt += [parts[2 * k], m["content"]]
    rebuilt.append(parts[-1])
    return spans if "".join(rebuilt) == text else None


def encode_side(tok: Any, messages: Sequence[Mapping[str, Any]], side: str = "student") -> SideEncoding:
    """Render ``messages`` with ``tok``'s chat template and tokenize with offsets."""
    _require_fast(tok, side)
    text = _render(tok, messages, side)
    enc = tok.backend_tokenizer.encode(text, add_special_tokens=False)
    return SideEncoding(text=text, ids=enc.ids, offsets=enc.offsets, content_chars=_content_chars(tok, messages, text))


@dataclass
class _Side:
    ids: np.ndarray  # [n] int64
    starts: np.ndarray  # [n] byte start in E
    ends: np.ndarray  # [n] byte end in E
    encoded: bytes  # E
    encoded_len: int
    spans: list[tuple[int, int] | None]  # per message: content byte range in E


def _prepare(table: ByteTable, enc: SideEncoding, contents: Sequence[bytes]) -> _Side:
    ids_list = enc.ids
    n = len(ids_list)
    ids = np.fromiter(ids_list, dtype=np.int64, count=n)
    if n and (ids.min() < 0 or ids.max() >= table.size):
        raise AlignmentError(f"token id out of range for a vocabulary of {table.size}: {int(ids.max())}")
    lens = table.lengths[ids]
    parts = list(itemgetter(*ids_list)(table.pieces)) if n > 1 else [table.pieces[i] for i in ids_list]
    if table.prepends and n:
        # The dummy prefix: SentencePiece writes "▁" before each text segment (after
        # every added token). Found by comparing a segment's token bytes with its text.
        added = table.added[ids]
        first = np.flatnonzero(~added & table.starts_space[ids] & np.concatenate(([True], added[:-1])))
        if first.size:
            lens = lens.copy()
            added_pos = np.flatnonzero(added)
            for i in first.tolist():
                nxt = int(np.searchsorted(added_pos, i))
                j = int(added_pos[nxt]) if nxt < added_pos.size else n
                a = enc.offsets[i - 1][1] if i > 0 else 0
                b = enc.offsets[j][0] if j < n else len(enc.text)
                expected = len(table.encode_text(enc.text[a:b]))
                if int(lens[i:j].sum()) == expected + 1:
                    lens[i] -= 1
                    parts[i] = parts[i][1:]
    ends = np.cumsum(lens)
    starts = ends - lens
    encoded = b"".join(parts)
    spans: list[tuple[int, int] | None] = []
    pos = 0
    off = enc.offsets
    for k, content in enumerate(contents):
        lo = pos
        if enc.content_chars is not None:
            a = enc.content_chars[k][0]
            t0 = bisect.bisect_right(off, a, key=itemgetter(1))  # first token ending after char a
            if t0 < n:
                lo = max(lo, int(starts[t0]))
        p = encoded.find(content, lo)
        if p < 0:
            spans.append(None)
            continue
        spans.append((p, p + len(content)))
        pos = p + len(content)
    return _Side(ids=ids, starts=starts, ends=ends, encoded=encoded, encoded_len=len(encoded), spans=spans)


# ---------------------------------------------------------------------------------------------
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
    :ivar student_spans: per message, content byte range in the student's encoded bytes (or None).
    """

    student_chunk_ids: np.ndarray
    teacher_chunk_ids: np.ndarray
    num_chunks: int
    student_last: np.ndarray
    teacher_last: np.ndarray
    chunk_bytes: np.ndarray
    student_side: _Side
    teacher_side: _Side
    stats: dict[str, float]


def _assign(starts: np.ndarray, ends: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """Chunk id per token given the chunks' byte ranges ``[c0, c1)`` (sorted, disjoint)."""
    if c0.size == 0:
        return np.full(starts.shape, -1, dtype=np.int64)
    j = np.searchsorted(c0, starts, side="right") - 1
    jc = np.clip(j, 0, None)
    ok = (j >= 0) & (ends > starts) & (ends <= c1[jc])
    return np.where(ok, j, -1)


def align_chunks(
    student_table: ByteTable,
    teacher_table: ByteTable,
    student: SideEncoding,
    teacher: SideEncoding,
    contents: Sequence[str],
    aligned: Sequence[bool] | None = None,
) -> ChunkAlignment:
    """The alignment step of SPEC 3.3: from two tokenized renderings to per-token chunk ids.

    :param contents: the messages' contents, in conversation order.
    :param aligned: per message, whether its content is chunked (default: all).
    """
    if aligned is None:
        aligned = [True] * len(contents)
    s_content = [student_table.encode_text(c) for c in contents]
    t_content = [teacher_table.encode_text(c) for c in contents]
    S = _prepare(student_table, student, s_content)
    T = _prepare(teacher_table, teacher, t_content)
    ps: list[int] = []
    pt: list[int] = []
    nn: list[int] = []
    content_bytes = unmatched = differing = 0
    for k, use in enumerate(aligned):
        if not use:
            continue
        content_bytes += len(s_content[k])
        a, b = S.spans[k], T.spans[k]
        if a is None or b is None:
            unmatched += 1
            continue
        if s_content[k] == t_content[k]:
            if s_content[k]:
                ps.append(a[0]), pt.append(b[0]), nn.append(len(s_content[k]))
            continue
        differing += 1  # the normalisers disagree: chunk only the runs equal on both sides
        matcher = difflib.SequenceMatcher(None, s_content[k], t_content[k], autojunk=False)
        for i, j, size in matcher.get_matching_blocks():
            if size:
                ps.append(a[0] + i), pt.append(b[0] + j), nn.append(size)
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
    common = np.flatnonzero(bound_s[idx_s] & bound_t[idx_t])
    span = np.searchsorted(g, common, side="right") - 1
    keep = span[:-1] == span[1:]
    a, b = common[:-1][keep], common[1:][keep]
    s0, s1, t0, t1 = idx_s[a], idx_s[b], idx_t[a], idx_t[b]
    s_ids = _assign(S.starts, S.ends, s0, s1)
    t_ids = _assign(T.starts, T.ends, t0, t1)
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


# ---------------------------------------------------------------------------------------------
# labels and truncation shared by both aligners


def _labels(table: ByteTable, side: _Side, messages: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Student labels: ids on tokens overlapping assistant content and on the end-of-turn
    token right after it, ``-100`` elsewhere."""
    spans = [sp for m, sp in zip(messages, side.spans) if m["role"] == "assistant" and sp is not None]
    target = np.zeros(side.ids.shape, dtype=bool)
    if spans:
        a = np.asarray([s for s, _ in spans], dtype=np.int64)
        b = np.asarray([e for _, e in spans], dtype=np.int64)
        k = np.searchsorted(a, side.ends, side="left") - 1  # last span starting before the token ends
        kc = np.clip(k, 0, None)
        target = (k >= 0) & (b[kc] > side.starts) & (side.ends > side.starts)
        after = np.searchsorted(side.starts, b, side="left")
        after = after[after < side.ids.size]
        after = after[table.eot[side.ids[after]]]
        target[after] = True
    return np.where(target, side.ids, IGNORE_INDEX)


def _prepare_inputs(
    teacher_tokenizer: Any,
    student_tokenizer: Any,
    messages: Any,
    roles: Sequence[str] | None,
    max_length: int | None,
    teacher_max_length: int | None,
) -> tuple[list[Mapping[str, Any]], list[bool]]:
    _require_fast(teacher_tokenizer, "teacher")
    _require_fast(student_tokenizer, "student")
    _check_length("max_length", max_length)
    _check_length("teacher_max_length", teacher_max_length)
    msgs = _check_messages(messages)
    aligned = _check_roles(msgs, roles)
    if not any(m["role"] == "assistant" for m in msgs):
        raise AlignmentError(
            "conversation has no 'assistant' message, so no student token is a target; "
            f"roles present: {sorted({m['role'] for m in msgs})}"
        )
    return msgs, aligned


def _cut_student(labels: np.ndarray, max_length: int | None) -> int:
    n = labels.size
    cut = n if max_length is None else min(n, max_length)
    if not (labels != IGNORE_INDEX).any():
        raise AlignmentError(
            "no student token is a target: the assistant content was not found in the student's encoding "
            "(does it contain special-token text such as '<|im_end|>' or '</s>'?)"
        )
    if not (labels[:cut] != IGNORE_INDEX).any():
        raise PromptTooLongError(
            f"the prompt fills max_length={max_length}: no target token among the first {cut} of "
            f"{n} student tokens (example discarded)"
        )
    return cut


def chunk_alignment(
    teacher_tokenizer: Any,
    student_tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    *,
    roles: Sequence[str] | None = None,
    max_length: int | None = None,
    teacher_max_length: int | None = None,
) -> AlignedExample:
    """Cross-tokenizer chunks for one conversation (SPEC 3.3).

    :param messages: ``[{"role": str, "content": str}, ...]``; must hold an ``assistant`` message.
    :param roles: roles whose content is chunked (default: every message).
    :param max_length: student cut; chunks whose student span passes it are dropped.
    :param teacher_max_length: teacher cap (``None``: no cap; the reference uses
        :data:`DEFAULT_TEACHER_MAX_LENGTH`); chunks past it are dropped. The teacher is
        cut after the last kept chunk (kept whole up to the cap when no chunk is left).
    :return: :class:`AlignedExample` with ``student_chunk_ids`` ``[L_S]``,
        ``teacher_chunk_ids`` ``[L_T]`` (``-1`` = none, ids ``0..num_chunks-1``) and
        ``stats``: ``chunks``, ``dropped_chunks`` (``..._student_cut``,
        ``..._teacher_cap``), ``content_bytes``, ``covered_bytes`` (before truncation),
        ``kept_bytes``, ``unmatched_messages``, ``normalised_differ_messages``,
        ``student_truncated_tokens``, ``teacher_truncated_tokens``.
    :raises AlignmentError: bad tokenizers or conversation (the message names them).
    :raises PromptTooLongError: no target token survives ``max_length``.
    """
    msgs, aligned = _prepare_inputs(teacher_tokenizer, student_tokenizer, messages, roles, max_length,
                                    teacher_max_length)
    s_table, t_table = byte_table(student_tokenizer), byte_table(teacher_tokenizer)
    student = encode_side(student_tokenizer, msgs, "student")
    teacher = encode_side(teacher_tokenizer, msgs, "teacher")
    al = align_chunks(s_table, t_table, student, teacher, [m["content"] for m in msgs], aligned)
    labels = _labels(s_table, al.student_side, msgs)
    cut = _cut_student(labels, max_length)
    n_t = al.teacher_side.ids.size
    cap = n_t if teacher_max_length is None else min(n_t, teacher_max_length)
    keep_s = int(np.searchsorted(al.student_last, cut, side="left"))  # chunks ending before the cut
    keep = min(keep_s, int(np.searchsorted(al.teacher_last, cap, side="left")))
    t_cut = int(al.teacher_last[keep - 1]) + 1 if keep else cap
    s_chunks = al.student_chunk_ids[:cut]
    t_chunks = al.teacher_chunk_ids[:t_cut]
    s_chunks = np.where(s_chunks < keep, s_chunks, -1)
    t_chunks = np.where(t_chunks < keep, t_chunks, -1)
    stats = dict(al.stats)
    stats.update(
        chunks=float(keep),
        dropped_chunks=float(al.num_chunks - keep),
        dropped_chunks_student_cut=float(al.num_chunks - keep_s),
        dropped_chunks_teacher_cap=float(keep_s - keep),
        kept_bytes=float(al.chunk_bytes[:keep].sum()),
        student_truncated_tokens=float(labels.size - cut),
        teacher_truncated_tokens=float(n_t - t_cut),
    )
    return AlignedExample(
        student_ids=al.student_side.ids[:cut].tolist(),
        labels=labels[:cut].tolist(),
        teacher_ids=al.teacher_side.ids[:t_cut].tolist(),
        student_chunk_ids=s_chunks.tolist(),
        teacher_chunk_ids=t_chunks.tolist(),
        num_chunks=keep,
        stats=stats,
    )


def template_pairs(
    teacher_tokenizer: Any,
    student_tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    *,
    roles: Sequence[str] | None = None,
    max_length: int | None = None,
    teacher_max_length: int | None = None,
) -> AlignedExample:
    """Template-aligned position pairs for a shared vocabulary (SPEC 3.2).

    Per aligned message, the content tokens of each side (tokens whose bytes lie
    fully inside the content range) are paired in order up to the shorter count;
    pairs whose ids differ are dropped and counted (``dropped_pairs``). Student
    truncation drops pairs past ``max_length``; pairs past ``teacher_max_length``
    are dropped; the teacher is cut after its last kept pair (kept whole up to the
    cap when no pair is left).

    :return: :class:`AlignedExample` with ``pairs`` ``[(student_pos, teacher_pos), ...]``,
        ``dropped_pairs`` (id mismatches) and ``stats``: ``pairs``, ``dropped_pairs``,
        ``unpaired_tokens`` (content tokens beyond the shorter count),
        ``truncated_pairs``, ``unmatched_messages``, ``student_truncated_tokens``,
        ``teacher_truncated_tokens``.
    :raises AlignmentError: bad tokenizers or conversation.
    :raises PromptTooLongError: no target token survives ``max_length``.
    """
    msgs, aligned = _prepare_inputs(teacher_tokenizer, student_tokenizer, messages, roles, max_length,
                                    teacher_max_length)
    s_table, t_table = byte_table(student_tokenizer), byte_table(teacher_tokenizer)
    student = encode_side(student_tokenizer, msgs, "student")
    teacher = encode_side(teacher_tokenizer, msgs, "teacher")
    contents = [m["content"] for m in msgs]
    S = _prepare(s_table, student, [s_table.encode_text(c) for c in contents])
    T = _prepare(t_table, teacher, [t_table.encode_text(c) for c in contents])
    s_pos: list[np.ndarray] = []
    t_pos: list[np.ndarray] = []
    unmatched = unpaired = 0
    for k, use in enumerate(aligned):
        if not use:
            continue
        a, b = S.spans[k], T.spans[k]
        if a is None or b is None:
            unmatched += 1
            continue
        si = np.arange(np.searchsorted(S.starts, a[0], "left"), np.searchsorted(S.ends, a[1], "right"))
        ti = np.arange(np.searchsorted(T.starts, b[0], "left"), np.searchsorted(T.ends, b[1], "right"))
        si = si[S.ends[si] > S.starts[si]]
        ti = ti[T.ends[ti] > T.starts[ti]]
        m = min(si.size, ti.size)
        unpaired += si.size + ti.size - 2 * m
        s_pos.append(si[:m]), t_pos.append(ti[:m])
    sp = np.concatenate(s_pos) if s_pos else np.zeros(0, np.int64)
    tp = np.concatenate(t_pos) if t_pos else np.zeros(0, np.int64)
    same = S.ids[sp] == T.ids[tp]
    dropped = int((~same).sum())
    sp, tp = sp[same], tp[same]
    labels = _labels(s_table, S, msgs)
    cut = _cut_student(labels, max_length)
    n_t = T.ids.size
    cap = n_t if teacher_max_length is None else min(n_t, teacher_max_length)
    ok = (sp < cut) & (tp < cap)
    truncated = int((~ok).sum())
    sp, tp = sp[ok], tp[ok]
    t_cut = int(tp.max()) + 1 if tp.size else cap
    stats = {
        "pairs": float(sp.size),
        "dropped_pairs": float(dropped),
        "unpaired_tokens": float(unpaired),
        "truncated_pairs": float(truncated),
        "unmatched_messages": float(unmatched),
        "student_truncated_tokens": float(labels.size - cut),
        "teacher_truncated_tokens": float(n_t - t_cut),
    }
    return AlignedExample(
        student_ids=S.ids[:cut].tolist(),
        labels=labels[:cut].tolist(),
        teacher_ids=T.ids[:t_cut].tolist(),
        pairs=list(zip(sp.tolist(), tp.tolist())),
        dropped_pairs=dropped,
        stats=stats,
    )
