"""Reading the repository's Markdown pages as GitHub renders them: headings (outside
fenced code), their anchors, one section's text, and the relative links of a page."""

from __future__ import annotations

import re
from pathlib import Path

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"\]\(([^()\s]+)\)")
INLINE_CODE = re.compile(r"`[^`]*`")


def slug(text: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation removed
    (letters, digits, ``_``, ``-`` and spaces kept), spaces turned into ``-``."""
    text = re.sub(r"`([^`]*)`", r"\1", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def headings(text: str) -> list[tuple[int, int, str]]:
    """``(line index, level, title)`` of every heading outside fenced code blocks."""
    out = []
    fenced = False
    for i, line in enumerate(text.splitlines()):
        if FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m is not None:
            out.append((i, len(m.group(1)), m.group(2)))
    return out


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page (duplicates get ``-1``, ``-2``, ... as on
    GitHub); headings inside fenced code blocks do not count."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, _, title in headings(page.read_text(encoding="utf-8")):
        base = slug(title)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def section(page: Path, title: str) -> str:
    """The text of the section headed ``title``: its heading line up to the next heading
    of the same or a higher level (or the end of the page). A missing heading raises
    ``KeyError`` naming the page and the headings it has."""
    text = page.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    found = headings(text)
    for k, (start, level, name) in enumerate(found):
        if name == title:
            end = next((i for i, lv, _ in found[k + 1:] if lv <= level), len(lines))
            return "".join(lines[start:end])
    raise KeyError(f"{page.name} has no heading {title!r}; it has {[name for _, _, name in found]}")


def relative_links(page: Path) -> list[tuple[int, str]]:
    """``(line number, target)`` of every link of the page that is not a URL, outside
    fenced code blocks and inline code."""
    out = []
    fenced = False
    for i, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if not re.match(r"^[a-z][a-z+.-]*:", target):  # http:, https:, mailto: ...
                out.append((i, target))
    return out


def dead_links(pages: list[Path]) -> list[str]:
    """``page:line: target`` for every relative link whose file, or whose heading in a
    Markdown file, is missing."""
    dead = []
    for page in pages:
        for line, target in relative_links(page):
            path, _, anchor = target.partition("#")
            linked = (page.parent / path) if path else page
            if not linked.exists() or (anchor and (linked.suffix != ".md" or anchor not in anchors(linked))):
                dead.append(f"{page.name}:{line}: {target}")
    return dead
