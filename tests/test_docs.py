"""The repository's own documents: every ``docs/<page>.md#<anchor>`` cited from the code,
the tests, the benchmarks, the README or the docs pages is a heading of that page, the
method page has every section the code relies on, every relative link of the README and
the pages resolves, and the README stays the front page (its sections, its commands, a
link to every page under docs/)."""

from __future__ import annotations

import re
from pathlib import Path

from helpers.markdown import anchors, dead_links, headings, slug

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
SCANNED = ("tide_plugin", "bench", "tests", "entry_points", "examples", "scripts", "docs", "README.md")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg"}

METHOD_SECTIONS = (
    "notation", "noising", "student-forward", "normalisation", "teacher-adapters", "shared-vocabulary",
    "targets", "template-alignment", "chunks", "mask-propagation", "compdemo", "token-kl", "calm", "tidal",
    "composition", "projected-kl", "hybrid-kl", "recipes", "published-results",
)
"""The sections of docs/method.md that code cites by name."""

FRONT_PAGE_SECTIONS = ("Set-up: the two commands", "Quick use", "Documentation", "Plugins")
"""The README's sections: what a user needs first. Reference material and measured reports
belong on a page under docs/, linked from the Documentation table."""

CITATION = re.compile(r"docs/([\w.-]+\.md)#([\w-]+)")
# Citations of documents that are not in the repository (written split so that this
# file does not match itself).
EXTERNAL = re.compile(
    r"\bSP" r"EC(?:\.md\b|\s+\d)"  # the external method spec, by file or section number
    r"|\bDES" r"IGN(?:\.md)?\s+\""  # the external design notes, by section
    r"|\b[Ii]ss" r"ue\s+#?\d+\b"  # an issue tracker entry
)


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


def test_the_links_of_the_readme_and_the_pages_resolve():
    dead = dead_links([README, *sorted(DOCS.glob("*.md"))])
    assert not dead, "links to missing files or headings:\n" + "\n".join(dead)


def test_a_dead_link_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\n## Kept\n\n```\n## Not a heading\n```\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md) [ok](docs/a.md#kept) [web](https://example.org/x.md) `[code](gone.md)`\n"
        "[bad](docs/a.md#not-a-heading) [gone](docs/gone.md)\n[self](#nowhere)\n"
        "```\n[in code](gone.md)\n```\n"
    )
    assert dead_links([page]) == [
        "README.md:2: docs/a.md#not-a-heading", "README.md:2: docs/gone.md", "README.md:3: #nowhere",
    ]


def test_the_readme_is_the_front_page():
    sections = [title for _, level, title in headings(README.read_text(encoding="utf-8")) if level == 2]
    assert tuple(sections) == FRONT_PAGE_SECTIONS, (
        f"README sections {sections}, expected {list(FRONT_PAGE_SECTIONS)}: put reference material and "
        "measured reports on a page under docs/ and link it from the README's Documentation table"
    )
    text = README.read_text(encoding="utf-8")
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if f"](docs/{p.name})" not in text]
    assert not unlinked, f"pages under docs/ that the README does not link: {unlinked}"


def test_the_readme_commands_are_make_targets_and_ci_runs_its_test_command():
    text = README.read_text(encoding="utf-8")
    assert re.search(r"^make test +# ", text, re.M), "the README's set-up block lost its one test command"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert [line for line in ci.splitlines() if line.startswith("make ")] == ["make test"]
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M))
    named = set(re.findall(r"`make ([\w-]+)`|^make ([\w-]+)", text, re.M))
    named = {a or b for a, b in named}
    assert {"demo", "test", "test-fast"} <= named
    assert named <= targets, f"the README names make targets the Makefile lacks: {sorted(named - targets)}"


def test_no_citation_of_a_document_outside_the_repository():
    found = []
    for path in scanned_files(ROOT):
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if EXTERNAL.search(line):
                found.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not found, f"{len(found)} citations of documents not in the repository:\n" + "\n".join(found)
