"""What each token id of a vocabulary spells, in bytes (:class:`ByteTable`)."""

from __future__ import annotations

import json
import re
import unicodedata
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..offline import bytes_to_unicode
from .checks import AlignmentError, require_fast, tokenizer_name

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
                f"tokenizer {tokenizer_name(tok)!r}: unsupported token convention (decoder {decoder[:120]!r}); "
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
    require_fast(tok, "the")
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
