"""What ``tide distill`` (no arguments) distils: the study's pipeline-A teacher (a trained
bidirectional masked-diffusion MoE) and its tokenizers, shipped with the package, into the
study's student init, on study corpus rows; held-out bits per byte before and after.
``--preset shared`` does the same with the study's pipeline-B teacher (block diffusion,
``x0_xt``, the student's vocabulary under another chat template).

The shipped files are made by::

    tide study --teachers-only --export DIR      # (on a GPU: study_gpu.sh) then copy DIR/* to
                                                  # tide_plugin/data/study/
    python -m tide_plugin.study.demo              # demo/train.jsonl, demo/heldout.jsonl
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .models import SHIPPED_DIR

DEMO_DATA_DIR = SHIPPED_DIR / "demo"


def demo_assets(teacher: str = "A") -> dict[str, str]:
    """Paths of the shipped demo pieces: student / teacher tokenizers, student init, the
    study's teacher ``A`` (bidirectional MoE, cross tokenizer) or ``B`` (block diffusion,
    the student's vocabulary under another chat template), train and held-out chat JSONL.
    One clear error when any is missing."""
    from .config import StudyConfig
    from .models import find_artifact
    from .run import init_name, teacher_name, tokenizers_key

    if teacher not in ("A", "B"):
        raise ValueError(f"demo teacher {teacher!r} is not one of ('A', 'B')")
    cfg = StudyConfig()
    key = tokenizers_key(cfg)
    names = {"tokenizers": f"tokenizers-{key}", "teacher": teacher_name(teacher, cfg, key), "student": init_name(cfg, key)}
    found = {k: find_artifact(v) for k, v in names.items()}
    missing = [names[k] for k, v in found.items() if v is None or not str(v).startswith(str(SHIPPED_DIR))]
    data = {"data": DEMO_DATA_DIR / "train.jsonl", "heldout": DEMO_DATA_DIR / "heldout.jsonl"}
    missing += [str(p) for p in data.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"the demo's trained teacher is not shipped in {SHIPPED_DIR} (missing {missing}); make it with "
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


def heldout_scorer(heldout_path: str, student_tok: Any, teacher_tok: Any, *, block_size: int, teacher_kind: str,
                   samples: int = 2, seed: int = 1234):
    """``(score_student(model), score_teacher(model))`` on the held-out chat JSONL, each a
    :class:`~tide_plugin.study.bpb.BpbResult` (bits per byte, its s.e., nats per sequence)."""
    from ..alignment.preprocess import load_jsonl
    from .bpb import BpbResult, heldout_bpb
    from .data import encode_heldout

    rows = load_jsonl(heldout_path)
    s_data, t_data = encode_heldout(rows, student_tok), encode_heldout(rows, teacher_tok)

    def student(model) -> BpbResult:
        return heldout_bpb(model, "bd3lm", s_data, mask_id=student_tok.mask_token_id, pad_id=student_tok.pad_token_id,
                           block_size=block_size, samples=samples, seed=seed)

    def teacher(model) -> BpbResult:
        return heldout_bpb(model, teacher_kind, t_data, mask_id=teacher_tok.mask_token_id,
                           pad_id=teacher_tok.pad_token_id, block_size=block_size, samples=samples, seed=seed)

    return student, teacher


def write_demo_data(folder: str | Path = DEMO_DATA_DIR, train_rows: int = 320, heldout_rows: int = 48) -> None:
    """The demo's train / held-out rows: a deterministic subset of the study corpus (held-out
    rows come from modules no study model was trained on)."""
    import json

    from .corpus import CorpusConfig, build_corpus

    start = time.time()
    corpus = build_corpus(CorpusConfig(max_train_rows=train_rows, max_heldout_rows=heldout_rows))
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", corpus.train), ("heldout", corpus.heldout)):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps({"messages": r["messages"], "module": r["module"]}, ensure_ascii=False) + "\n")
    print(f"wrote {len(corpus.train)} train and {len(corpus.heldout)} held-out rows (Python {corpus.python}) "
          f"to {out} in {time.time() - start:.0f} s")


def paired_change(before: Any, after: Any) -> tuple[float, float]:
    """After minus before in bits per byte, with its standard error over the held-out
    sequences (the same sequences and noise draws both times, so the difference is paired)."""
    from .bpb import ratio_bpb

    return ratio_bpb([a - b for a, b in zip(after.nats, before.nats)], before.nbytes)


def heldout_callback(score_student, every: int, curve: list):
    """A ``TrainerCallback`` appending ``(step, student bits per byte)`` to ``curve`` every
    ``every`` steps, the last step excepted (the run scores its final student itself)."""
    import transformers

    class _Heldout(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ARG002
            step = state.global_step
            if every and step % every == 0 and step < state.max_steps and state.is_world_process_zero:
                curve.append((step, score_student(model).bpb))

    return _Heldout()


CONTROL = "none"
"""The comparison's name for the CE-only control (the registry's CE-only objective)."""
CONTROL_NAMES = frozenset({"none", "ce"})
VERDICT_SE = 2.0
"""A student beats (or falls behind) the control when the paired difference is at least
this many standard errors from zero."""


def comparison_arms(arms: str | Sequence[str] | None, objective: str) -> list[str]:
    """The students trained beside the run's own (``objective``) for the held-out
    comparison: the CE-only control first, then every other objective of ``arms``
    (comma-separated or a list; ``none``/``ce`` name the control), each once and none
    equal to ``objective``. Empty (no comparison) when ``arms`` is empty; any arm given
    brings the control, since every difference is taken against it."""
    if arms is None:
        return []
    items = [a.strip() for a in (arms.split(",") if isinstance(arms, str) else arms)]
    items = [a for a in items if a]
    if not items:
        return []
    out = [] if objective in CONTROL_NAMES else [CONTROL]
    for arm in items:
        name = CONTROL if arm in CONTROL_NAMES else arm
        if name != objective and name not in out:
            out.append(name)
    return out


def versus_control(control: Any, students: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{objective: {"bpb_after", "minus_ce", "minus_ce_se"}}``: each student's held-out
    bits per byte and its difference to the CE-only control's, paired over the same
    held-out sequences and noise draws (:func:`paired_change` with the control as
    "before")."""
    out = {}
    for name, result in students.items():
        diff, se = paired_change(control, result)
        out[name] = {"bpb_after": result.bpb, "minus_ce": diff, "minus_ce_se": se}
    return out


def verdict(name: str, entry: Mapping[str, float]) -> str:
    """One line in words: ``name: 3.2410 bits/byte, 0.0123 ± 0.0021 below the CE-only
    control (5.9 s.e.): beats it``."""
    diff, se = entry["minus_ce"], entry["minus_ce_se"]
    head = f"{name}: {entry['bpb_after']:.4f} bits/byte, "
    if diff == 0.0:
        return head + "identical to the CE-only control"
    where = "below" if diff < 0 else "above"
    z = abs(diff) / se if se > 0 else math.inf
    words = "no clear difference" if z < VERDICT_SE else ("beats it" if diff < 0 else "worse than it")
    return head + f"{abs(diff):.4f} ± {se:.4f} {where} the CE-only control ({z:.1f} s.e.): {words}"


if __name__ == "__main__":
    write_demo_data(*sys.argv[1:2])
