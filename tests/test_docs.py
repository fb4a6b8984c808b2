"""The repository's own documents: every ``docs/<page>.md#<anchor>`` cited from the code,
the tests, the benchmarks or the README is a heading of that page, the method page has
every section the code relies on, and the pages' own links resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCANNED = ("tide_plugin", "bench", "tests", "entry_points", "README.md")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg"}

METHOD_SECTIONS = (
    "notation", "noising", "student-forward", "normalisation", "teacher-adapters", "shared-vocabulary",
    "targets", "template-alignment", "chunks", "mask-propagation", "compdemo", "token-kl", "calm", "tidal",
    "composition", "projected-kl", "hybrid-kl", "recipes", "published-results",
)
"""The sections of docs/method.md that code cites by name."""

CITATION = re.compile(r"docs/([\w.-]+\.md)#([\w-]+)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# Citations of documents that are not in the repository (written split so that this
# file does not match itself).
EXTERNAL = re.compile(
    r"\bSP" r"EC(?:\.md\b|\s+\d)"  # the external method spec, by file or section number
    r"|\bDES" r"IGN(?:\.md)?\s+\""  # the external design notes, by section
    r"|\b[Ii]ss" r"ue\s+#?\d+\b"  # an issue tracker entry
)


def slug(text: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation removed
    (letters, digits, ``_``, ``-`` and spaces kept), spaces turned into ``-``."""
    text = re.sub(r"`([^`]*)`", r"\1", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page (duplicates get ``-1``, ``-2``, ... as on
    GitHub); headings inside fenced code blocks do not count."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m is None:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def scanned_files(root: Path) -> list[Path]:
    """The files that may cite the pages (this one, whose examples are made up, excepted)."""
    out = []
    for name in SCANNED:
        path = root / name
        if path.is_file():
            out.append(path)
        elif path.is_dir():
            out.extend(
                p for p in sorted(path.rglob("*"))
                if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts
            )
    return [p for p in out if p.resolve() != Path(__file__).resolve()]


def dead_citations(files: list[Path], docs: Path) -> list[str]:
    """``path:line: docs/page.md#anchor`` for every citation whose page or heading is missing."""
    cache: dict[str, set[str] | None] = {}
    dead = []
    for path in files:
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for page, anchor in CITATION.findall(line):
                if page not in cache:
                    cache[page] = anchors(docs / page) if (docs / page).is_file() else None
                if cache[page] is None or anchor not in cache[page]:
                    dead.append(f"{path}:{i}: docs/{page}#{anchor}")
    return dead


def test_slug_follows_github():
    assert slug("Mask propagation") == "mask-propagation"
    assert slug("CompDemo") == "compdemo"
    assert slug("Token KL") == "token-kl"
    assert slug("Who owns each run-level value") == "who-owns-each-run-level-value"
    assert slug("The `noise` stage (ours)") == "the-noise-stage-ours"
    assert slug("Sampling and evaluation") == "sampling-and-evaluation"


def test_method_page_has_every_cited_section():
    missing = [a for a in METHOD_SECTIONS if a not in anchors(DOCS / "method.md")]
    assert not missing, f"docs/method.md lacks the sections {missing}"


def test_every_cited_anchor_exists():
    dead = dead_citations(scanned_files(ROOT), DOCS)
    assert not dead, "citations of missing headings:\n" + "\n".join(dead)


def test_a_dead_citation_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "method.md").write_text("# Title\n\n## Noising\n\n```\n## Not a heading\n```\n")
    src = tmp_path / "mod.py"
    src.write_text('"""See docs/method.md#noising and docs/method.md#not-a-heading, docs/gone.md#x."""\n')
    dead = dead_citations([src], tmp_path / "docs")
    assert [d.split(": ", 1)[1] for d in dead] == ["docs/method.md#not-a-heading", "docs/gone.md#x"]


def test_the_pages_links_resolve():
    dead = []
    for page in sorted(DOCS.glob("*.md")):
        for target, anchor in re.findall(r"\]\(([\w.-]*\.md)?#([\w-]+)\)", page.read_text(encoding="utf-8")):
            linked = DOCS / target if target else page
            if not linked.is_file() or anchor not in anchors(linked):
                dead.append(f"{page.name}: {target}#{anchor}")
    assert not dead, "links to missing headings:\n" + "\n".join(dead)


def test_no_citation_of_a_document_outside_the_repository():
    found = []
    for path in scanned_files(ROOT):
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if EXTERNAL.search(line):
                found.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not found, f"{len(found)} citations of documents not in the repository:\n" + "\n".join(found)
