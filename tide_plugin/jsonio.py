"""JSON read with whole error reasons: the parser's message, line and column, and a
short excerpt around the fault, in one line that names where the text came from.

``json.JSONDecodeError.msg`` alone is cut ("Invalid control character at"); the
position and the text around it are what a user needs to find the fault.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

EXCERPT = 24  # characters shown on each side of the fault


def describe_error(exc: json.JSONDecodeError) -> str:
    """``Invalid control character at line 1 column 9 (char 8), near '{"a": "x' >>> '\\tb"}'``:
    the parser's reason, where it stopped, and the text around it (``repr`` so that
    control characters show)."""
    reason = exc.msg[: -len(" at")] if exc.msg.endswith(" at") else exc.msg
    before = exc.doc[max(0, exc.pos - EXCERPT) : exc.pos]
    after = exc.doc[exc.pos : exc.pos + EXCERPT]
    lead = "..." if exc.pos > EXCERPT else ""
    tail = "..." if exc.pos + EXCERPT < len(exc.doc) else ""
    near = f"{lead}{before!r} >>> {after!r}{tail}" if after else f"{lead}{before!r} >>> (end of text)"
    return f"{reason} at line {exc.lineno} column {exc.colno} (char {exc.pos}), near {near}"


def loads(text: str, where: str) -> Any:
    """``json.loads(text)``, or ``ValueError("<where>: not valid JSON: <reason>")``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON: {describe_error(exc)}") from exc


def read(path: str | os.PathLike[str]) -> Any:
    """The JSON value in file ``path`` (UTF-8); a parse error names the file."""
    return loads(Path(path).read_text(encoding="utf-8"), str(path))
