"""``tide study``: the paper's comparison in miniature.

    tide study --quick --output runs/study-quick       # smoke size, <= 10 minutes on 2 cores
    tide study --output runs/study                     # docs/study.md's table, <= 1 hour on 2 cores
    tide study --size gpu --device cuda --output runs/study-gpu
"""

from __future__ import annotations

import argparse

from .arms import ARMS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="runs/study", help="folder for study.md, study.json, study.png (must be new)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the smoke size (same as --size quick)")
    size.add_argument("--size", default=None, help="smoke | quick | default | gpu (default: default)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (cuda:N)")
    parser.add_argument("--tokenizers", default=None, choices=["trained", "real"],
                        help="trained (small BPEs, default) or real (offline Qwen / Mistral, for GPU runs)")
    parser.add_argument("--seeds", type=int, default=None, help="number of paired seeds (0..N-1)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per arm")
    parser.add_argument("--arms", default=None, help=f"comma-separated subset of {list(ARMS)}")
    parser.add_argument("--teacher-minutes", type=float, default=None,
                        help="wall-clock cap per teacher when one must be trained (the schedule is shortened to fit)")
    parser.add_argument("--teachers-only", action="store_true", help="stop after the teachers and the student init")
    parser.add_argument("--export", default=None, help="copy the tokenizers, teachers and student init here (to ship)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace):
    from .config import preset

    cfg = preset("quick" if args.quick else (args.size or "default"))
    changes = {}
    if args.tokenizers:
        changes["tokenizers"] = args.tokenizers
    if args.seeds is not None:
        if args.seeds < 1:
            raise ValueError(f"--seeds {args.seeds} must be >= 1")
        changes["seeds"] = tuple(range(args.seeds))
    if args.steps is not None:
        changes["steps"] = args.steps
    if args.arms:
        changes["arms"] = parse_arms(args.arms)
    return cfg.replace(**changes) if changes else cfg


def parse_arms(text: str) -> tuple[str, ...]:
    """``--arms``: arm names separated by commas (names may hold spaces, ``/``, ``+`` and
    parentheses; none holds a comma)."""
    return tuple(a.strip() for a in text.split(",") if a.strip())


def run(args: argparse.Namespace) -> int:
    from .run import run_study

    cfg = config_from_args(args)
    budget = None if args.teacher_minutes is None else 60.0 * args.teacher_minutes
    run_study(cfg, args.output, device=args.device, teacher_budget_s=budget, teachers_only=args.teachers_only,
              export=args.export, progress=not args.no_progress)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tide study", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
