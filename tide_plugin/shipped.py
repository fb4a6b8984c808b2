"""What the package ships for ``tide distill``'s demos: the study's trained teachers, their
tokenizers and the student init (folders under ``data/study``, named by
``data/study/manifest.json``, which ``tide study --export`` writes beside them), and the
demo's train / held-out chat rows (``data/study/demo``). Finding them needs no study code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

SHIPPED_DIR = Path(__file__).resolve().parent / "data" / "study"
DEMO_DATA_DIR = SHIPPED_DIR / "demo"
MANIFEST = "manifest.json"
MANIFEST_KEYS = ("tokenizers", "teacher_A", "teacher_B", "student_init")
META_FILE = "study_meta.json"
"""Written last into every artifact folder: a folder without it is incomplete."""


def write_manifest(folder: str | Path, names: Mapping[str, str]) -> Path:
    """Name the shipped artifacts (``tokenizers``, ``teacher_A``, ``teacher_B``,
    ``student_init``: their folder names) in ``folder/manifest.json``."""
    missing = [k for k in MANIFEST_KEYS if k not in names]
    if missing:
        raise ValueError(f"the manifest needs every one of {MANIFEST_KEYS}; missing {missing}")
    path = Path(folder) / MANIFEST
    path.write_text(json.dumps({k: names[k] for k in MANIFEST_KEYS}, indent=2) + "\n")
    return path


def demo_assets(teacher: str = "A") -> dict[str, str]:
    """Paths of the shipped demo pieces: student / teacher tokenizers, student init, the
    study's teacher ``A`` (bidirectional MoE, cross tokenizer) or ``B`` (block diffusion,
    the student's vocabulary under another chat template), train and held-out chat JSONL.
    One clear error when any is missing."""
    if teacher not in ("A", "B"):
        raise ValueError(f"demo teacher {teacher!r} is not one of ('A', 'B')")
    root = SHIPPED_DIR
    manifest = root / MANIFEST
    missing: list[str] = []
    found: dict[str, Path] = {}
    if manifest.is_file():
        names = json.loads(manifest.read_text())
        wanted = {"tokenizers": names["tokenizers"], "teacher": names[f"teacher_{teacher}"],
                  "student": names["student_init"]}
        found = {k: root / v for k, v in wanted.items()}
        missing += [wanted[k] for k, v in found.items() if not (v / META_FILE).is_file()]
    else:
        missing.append(str(manifest))
    data = {"data": root / "demo" / "train.jsonl", "heldout": root / "demo" / "heldout.jsonl"}
    missing += [str(p) for p in data.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"the demo's trained teacher is not shipped in {root} (missing {missing}); make it with "
            "`tide study --teachers-only --export DIR` and copy DIR/* there, or pass --preset none with your own models"
        )
    teacher_tok = found["tokenizers"] / "cross" if teacher == "A" else found["teacher"] / "tokenizer"
    return {
        "student_tokenizer": str(found["tokenizers"] / "student"),
        "teacher_tokenizer": str(teacher_tok),
        "model_name_or_path": str(found["student"]),
        "teacher_model_name_or_path": str(found["teacher"]),
        "data": str(data["data"]),
        "heldout": str(data["heldout"]),
    }
