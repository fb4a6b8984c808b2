"""What a preprocessed dataset folder records about itself, and the checks around it.

``tide preprocess`` writes :data:`REPORT_FILE` next to the saved dataset: the inputs,
the report, and the tokenizers the rows were aligned with (name and a fingerprint of
the vocabulary, :func:`tokenizer_fingerprint`). :func:`dataset_tokenizers` reads them
back so that a run with other tokenizers can be refused before any work.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..jsonio import describe_error

REPORT_FILE = "tide_preprocess_report.json"
_DATASET_FILES = ("dataset_info.json", "state.json", "dataset_dict.json", REPORT_FILE)


def tokenizer_fingerprint(tok: Any) -> str:
    """A short, stable fingerprint of a tokenizer's vocabulary: every ``(id, token)``
    pair, added tokens included (``"sha256:<16 hex>"``). Equal vocabularies give
    equal fingerprints whatever their folder or chat template."""
    vocab = tok.get_vocab()
    h = hashlib.sha256()
    for token, i in sorted(vocab.items(), key=lambda kv: (kv[1], kv[0])):
        h.update(f"{i}\t{token}\n".encode("utf-8", "surrogatepass"))
    return "sha256:" + h.hexdigest()[:16]


def tokenizer_record(tok: Any, spec: str | None = None) -> dict[str, Any]:
    """``{"name", "spec", "fingerprint", "vocab_size", "chat_template"}`` of one tokenizer
    (``chat_template``: the first 16 hex digits of its template's sha256, or ``None``)."""
    template = getattr(tok, "chat_template", None)
    return {
        "name": getattr(tok, "name_or_path", None) or type(tok).__name__,
        "spec": spec,
        "fingerprint": tokenizer_fingerprint(tok),
        "vocab_size": len(tok),
        "chat_template": hashlib.sha256(template.encode()).hexdigest()[:16] if isinstance(template, str) else None,
    }


def dataset_tokenizers(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The tokenizers a ``tide preprocess`` folder was aligned with:
    ``{"student": {"name", "fingerprint", ...}, "teacher": {...}}``; ``{}`` when the
    folder holds no such record (a dataset saved another way).

    :raises ValueError: the record exists but cannot be read (one line naming the file).
    """
    meta_path = Path(path) / REPORT_FILE
    if not meta_path.is_file():
        return {}
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{meta_path}: cannot read the preprocessing record: not valid JSON: {describe_error(exc)}") from exc
    except OSError as exc:
        raise ValueError(f"{meta_path}: cannot read the preprocessing record ({exc})") from exc
    found = meta.get("tokenizers") if isinstance(meta, dict) else None
    return {k: dict(v) for k, v in found.items() if isinstance(v, dict)} if isinstance(found, dict) else {}


def check_output_dir(path: str | os.PathLike[str], overwrite: bool, *, replace: bool = False) -> None:
    """Refuse to write into a folder that already holds files, unless ``overwrite`` and
    the folder holds a dataset; with ``replace`` that dataset is then removed (call it
    so only when the new one is ready to be saved). One-line ``ValueError`` otherwise."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {str(out)!r} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    is_dataset = any((out / name).exists() for name in _DATASET_FILES)
    if not overwrite:
        what = "a dataset" if is_dataset else "files"
        raise ValueError(f"output folder {str(out)!r} already holds {what}; pass --overwrite_output_dir to replace it")
    if not is_dataset:
        raise ValueError(
            f"output folder {str(out)!r} holds files but no dataset; --overwrite_output_dir replaces only a dataset "
            "folder: choose a new or empty folder"
        )
    if replace:
        shutil.rmtree(out)
