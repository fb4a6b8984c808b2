"""The study's corpus: real text nobody here wrote, taken from the running Python.

- **Code**: every function of the standard library's source (``sysconfig.get_paths()["stdlib"]``)
  that has a docstring. Prompt: the signature and the docstring; response: the body.
- **Prose**: pydoc's topic texts (``pydoc_data.topics``), cut at paragraph boundaries.

Each row belongs to a *module* (``json.decoder``, ``pydoc_data.topics:assert``); a module goes
to held-out when a hash of its name says so, so the split is deterministic, independent of the
order files are read in, and no held-out module is ever seen in training. Long texts are cut at
line (paragraph) boundaries to the configured character budgets; everything skipped is counted.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import sysconfig
import textwrap
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3"})
SOURCES = ("code", "prose")


@dataclass(frozen=True)
class CorpusConfig:
    """What the corpus is made of.

    :param heldout_permille: share of modules held out, in thousandths (by name hash).
    :param max_prompt_chars: prompt budget (signature + docstring; cut at a line boundary).
    :param max_response_chars: response budget (body or topic part; cut at a line boundary).
    :param min_response_chars: shorter responses are skipped (and counted).
    :param max_train_rows: cap on train rows (a hash-ordered, deterministic subset); 0 = all.
    :param max_heldout_rows: cap on held-out rows, likewise.
    :param sources: ``code``, ``prose`` or both.
    :param packages: only these top-level standard-library packages / modules (empty: all).
    """

    heldout_permille: int = 100
    max_prompt_chars: int = 240
    max_response_chars: int = 320
    min_response_chars: int = 24
    max_train_rows: int = 0
    max_heldout_rows: int = 0
    sources: tuple[str, ...] = SOURCES
    packages: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.heldout_permille < 1000:
            raise ValueError(f"heldout_permille {self.heldout_permille} must lie in (0, 1000)")
        for name in ("max_prompt_chars", "max_response_chars", "min_response_chars"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} {getattr(self, name)} must be a positive int")
        for name in ("max_train_rows", "max_heldout_rows"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} {getattr(self, name)} must be >= 0 (0 = no cap)")
        bad = [s for s in self.sources if s not in SOURCES]
        if bad or not self.sources:
            raise ValueError(f"sources {self.sources!r}: each must be one of {SOURCES}")


@dataclass
class Corpus:
    """Train and held-out chat rows (``{"messages": [...], "module": name}``) and the counts."""

    train: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    config: CorpusConfig
    counts: dict[str, int] = field(default_factory=dict)
    python: str = field(default_factory=lambda: sys.version.split()[0])

    def modules(self, split: str) -> set[str]:
        return {r["module"] for r in (self.train if split == "train" else self.heldout)}

    def write(self, folder: str | os.PathLike[str]) -> dict[str, str]:
        """``train.jsonl``, ``heldout.jsonl`` (chat JSONL, readable by ``tide preprocess``)
        and ``corpus.json`` (config, counts, Python version) in ``folder``."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths = {}
        for split, rows in (("train", self.train), ("heldout", self.heldout)):
            path = out / f"{split}.jsonl"
            with open(path, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            paths[split] = str(path)
        meta = {"config": asdict(self.config), "counts": self.counts, "python": self.python}
        (out / "corpus.json").write_text(json.dumps(meta, indent=2) + "\n")
        return paths


def _hash(text: str) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:12], 16)


def is_heldout(module: str, permille: int) -> bool:
    """Whether ``module`` is held out: a fixed hash of its name, not the file order."""
    return _hash("split:" + module) % 1000 < permille


def _cut(text: str, budget: int) -> str:
    """``text`` cut at the last line boundary within ``budget`` characters ('' if none)."""
    if len(text) <= budget:
        return text
    head = text[:budget]
    nl = head.rfind("\n")
    return head[:nl].rstrip() if nl > 0 else ""


def stdlib_files(root: str | os.PathLike[str] | None = None) -> Iterator[tuple[str, Path]]:
    """``(module name, path)`` of the standard library's sources, sorted, tests skipped."""
    base = Path(root or sysconfig.get_paths()["stdlib"])
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(base)
        if any(part in SKIP_DIRS or part.startswith("test_") for part in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and all(p.isidentifier() for p in parts):
            yield ".".join(parts), path


def function_rows(module: str, source: str, config: CorpusConfig, counts: Counter) -> Iterator[dict[str, Any]]:
    """One chat row per function with a docstring and a body after it."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        counts["files_unparsable"] += 1
        return
    lines = source.splitlines()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node)
        if not doc:
            continue
        counts["functions_with_docstring"] += 1
        if len(node.body) < 2:
            counts["skipped_no_body"] += 1
            continue
        header = textwrap.dedent("\n".join(lines[node.lineno - 1 : node.body[0].lineno - 1])).strip()
        body = textwrap.dedent("\n".join(lines[node.body[1].lineno - 1 : node.end_lineno])).strip("\n")
        prompt = _cut(f"{header}\n{doc}", config.max_prompt_chars)
        response = _cut(body, config.max_response_chars)
        if not prompt or len(response) < config.min_response_chars:
            counts["skipped_too_short_or_long"] += 1
            continue
        yield _row(module, f"{node.name}@{node.lineno}", prompt, response)


def topic_rows(config: CorpusConfig, counts: Counter) -> Iterator[dict[str, Any]]:
    """pydoc's topic texts, cut into parts of whole paragraphs."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        counts["pydoc_topics_missing"] += 1
        return
    for name in sorted(topics):
        paragraphs = [p.strip("\n") for p in topics[name].split("\n\n") if p.strip()]
        part, k = "", 0
        for para in paragraphs + [None]:
            if para is not None and len(part) + len(para) + 2 <= config.max_response_chars:
                part = f"{part}\n\n{para}" if part else para
                continue
            if len(part) >= config.min_response_chars:
                k += 1
                prompt = f"Python documentation, topic {name!r}, part {k}."
                yield _row(f"pydoc_data.topics:{name}", f"part{k}", prompt, part)
            elif part:
                counts["skipped_too_short_or_long"] += 1
            part = _cut(para, config.max_response_chars) if para is not None else ""


def _row(module: str, key: str, prompt: str, response: str) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
        "module": module,
        "key": key,
    }


def build_corpus(config: CorpusConfig | None = None, *, stdlib: str | os.PathLike[str] | None = None) -> Corpus:
    """Build the corpus from the running interpreter (or ``stdlib``, a source folder)."""
    config = config or CorpusConfig()
    counts: Counter = Counter()
    rows: list[dict[str, Any]] = []
    if "code" in config.sources:
        for module, path in stdlib_files(stdlib):
            if config.packages and module.split(".")[0] not in config.packages:
                continue
            try:
                source = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                counts["files_unreadable"] += 1
                continue
            counts["files"] += 1
            rows.extend(function_rows(module, source, config, counts))
    if "prose" in config.sources:
        rows.extend(topic_rows(config, counts))
    train = [r for r in rows if not is_heldout(r["module"], config.heldout_permille)]
    heldout = [r for r in rows if is_heldout(r["module"], config.heldout_permille)]
    counts["rows"] = len(rows)
    train, heldout = _cap(train, config.max_train_rows), _cap(heldout, config.max_heldout_rows)
    counts["train_rows"], counts["heldout_rows"] = len(train), len(heldout)
    counts["capped_rows"] = counts["rows"] - len(train) - len(heldout)
    return Corpus(train=train, heldout=heldout, config=config, counts=dict(counts))


def _cap(rows: list[dict[str, Any]], cap: int) -> list[dict[str, Any]]:
    """A deterministic subset (by a hash of each row's module and key), in hash order."""
    ordered = sorted(rows, key=lambda r: (_hash(f"{r['module']}|{r['key']}"), r["module"], r["key"]))
    return ordered[:cap] if cap else ordered
