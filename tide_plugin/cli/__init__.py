"""The ``tide`` command: ``distill``, ``preprocess``, ``eval``, ``plugins``.

Each subcommand lives in the module that owns its work and exposes
``add_arguments(parser)`` and ``run(args) -> int``; this file only dispatches,
importing the heavy module when its subcommand is chosen.

Every usage error (unknown command or flag, bad value, missing file) is one line on
stderr, ``tide <command>: error: ...``, with a "did you mean" for unknown names, and
exit code 2.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys
from collections.abc import Iterable, Sequence

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "distill": ("tide_plugin.cli.distill", "distil a teacher into a block-diffusion student"),
    "preprocess": ("tide_plugin.alignment.preprocess", "tokenise and align chat JSONL into a dataset"),
    "eval": ("tide_plugin.eval.cli", "evaluate a student with lm-eval (offline tasks included)"),
    "plugins": ("tide_plugin.cli.plugins", "list every registered plugin"),
    "study": ("tide_plugin.study.cli", "the paper's comparison in miniature: teachers, arms, held-out bits per byte"),
}
USAGE_ERROR = 2
_INVOCATION: list[str] = []


def invocation() -> list[str]:
    """The running subcommand's arguments as given (after ``tide <command>``)."""
    return list(_INVOCATION)


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``choices``, else ``""``."""
    close = difflib.get_close_matches(str(name), sorted(str(c) for c in choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _close_progress_bars() -> None:
    """End any open progress bar's line, so an error is not glued to it."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", [])):
        try:
            bar.close()
        except Exception:  # a bar half torn down: its line is ended anyway below
            pass
    sys.stdout.flush()


def _error_line(prog: str, message: str) -> None:
    _close_progress_bars()
    message = " ".join(str(message).split())  # one line, whatever the exception held
    sys.stderr.write(f"{prog}: error: {message}\n")
    sys.stderr.flush()


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line usage errors (no usage block), "did you mean" for an
    unknown flag, and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        if message.startswith("unrecognized arguments:"):
            flags = [a for a in message.split(":", 1)[1].split() if a.startswith("-")]
            known = [o for a in self._actions for o in a.option_strings]
            message += "".join(did_you_mean(f.split("=", 1)[0], known) for f in flags)
            message += f"; see `{self.prog} --help`"
        elif "invalid choice: " in message and "(choose from " in message:
            given = message.split("invalid choice: ", 1)[1].split(" (choose from ", 1)[0].strip("'\"")
            options = message.split("(choose from ", 1)[1].rstrip(")").replace("'", "").split(", ")
            message += did_you_mean(given, options)
        _error_line(self.prog, message)
        raise SystemExit(USAGE_ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="tide", description="TIDE cross-architecture distillation for diffusion LLMs")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, (module, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def join_negative_values(argv: Sequence[str]) -> list[str]:
    """``--flag -1e-3`` -> ``--flag=-1e-3``: argparse takes ``-1e-3`` for an option (its
    negative-number rule knows no exponents) and says "expected one argument"; joined,
    the value reaches the option's own check."""
    out: list[str] = []
    for arg in argv:
        if out and _NEGATIVE_NUMBER.match(arg) and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = join_negative_values(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            _error_line(
                "tide",
                f"unknown command {argv[0]!r}{did_you_mean(argv[0], SUBCOMMANDS)}; choose one of {', '.join(SUBCOMMANDS)}",
            )
            return USAGE_ERROR
        build_parser().print_help()
        return 0
    # Build only the chosen subcommand's parser, so `tide plugins` does not import torch models.
    name = argv[0]
    module_name, help_text = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    parser = OneLineParser(prog=f"tide {name}", description=help_text)
    module.add_arguments(parser)
    try:
        args = parser.parse_args(argv[1:])
    except SystemExit as exc:  # --help (0) or a usage error (already reported, 2)
        return int(exc.code or 0)
    from ..registry import PluginError

    _INVOCATION[:] = argv[1:]
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:  # before training started (a run in training saves and says how to resume)
        _error_line(f"tide {name}", "interrupted")
        return 130
    except (PluginError, ValueError, TypeError, OSError, ImportError) as exc:
        # Bad input (unknown plugin, invalid option, missing file or package): one clear
        # line, no traceback. TIDE_DEBUG=1 shows the traceback.
        if os.environ.get("TIDE_DEBUG"):
            raise
        _error_line(f"tide {name}", f"{exc} (set TIDE_DEBUG=1 for the traceback)")
        return USAGE_ERROR
