"""``tide plugins``: a table of every registered plugin, and what failed to load."""

from __future__ import annotations

import argparse
import sys

from ..hookspecs import KINDS


def add_arguments(parser: argparse.ArgumentParser) -> None:  # `tide plugins`
    parser.add_argument("--kind", choices=list(KINDS), help="only this kind")


def run(args: argparse.Namespace) -> int:  # `tide plugins`
    from ..registry import get_registry

    reg = get_registry()
    rows = [("kind", "name", "aliases", "distribution", "summary")]
    for kind in KINDS:
        if args.kind and kind != args.kind:
            continue
        for info in reg.available(kind).values():
            rows.append((kind, info.name, ", ".join(info.aliases) or "-", f"{info.distribution} {info.version}", info.summary))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
        if i == 0:
            print("  ".join("-" * w for w in widths) + "  " + "-" * 7)
    for f in reg.failures:
        print(f"\nnot loaded: {f.entry_point} ({f.target}) from {f.distribution}: {f.error}", file=sys.stderr)
    if reg.blocked:
        print(f"\nblocked by TIDE_DISABLE_PLUGINS: {', '.join(reg.blocked)}", file=sys.stderr)
    return 0
