"""The ``tide`` command: ``distill``, ``preprocess``, ``eval``, ``plugins``.

Each subcommand lives in the module that owns its work and exposes
``add_arguments(parser)`` and ``run(args) -> int``; this file only dispatches,
importing the heavy module when its subcommand is chosen.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "distill": ("tide_plugin.cli.distill", "distil a teacher into a block-diffusion student"),
    "preprocess": ("tide_plugin.alignment.preprocess", "tokenise and align chat JSONL into a dataset"),
    "eval": ("tide_plugin.eval.cli", "evaluate a student with lm-eval (offline tasks included)"),
    "plugins": ("tide_plugin.cli.plugins", "list every registered plugin"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tide", description="TIDE cross-architecture distillation for diffusion LLMs")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"tide: unknown command {argv[0]!r}; choose one of {', '.join(SUBCOMMANDS)}", file=sys.stderr)
            return 2
        build_parser().print_help()
        return 0
    # Build only the chosen subcommand's parser, so `tide plugins` does not import torch models.
    name = argv[0]
    module_name, help_text = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"tide {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    from ..registry import PluginError

    try:
        return int(module.run(args) or 0)
    except (PluginError, ValueError, TypeError, FileNotFoundError, ImportError) as exc:
        # Bad input (unknown plugin, invalid option, missing file or package): one clear
        # line, no traceback. TIDE_DEBUG=1 shows the traceback.
        if os.environ.get("TIDE_DEBUG"):
            raise
        print(f"tide {name}: error: {exc}", file=sys.stderr)
        print("(set TIDE_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2
