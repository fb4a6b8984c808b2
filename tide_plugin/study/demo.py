"""The data of ``tide distill``'s demos, made by the study: the study's pipeline-A teacher
(a trained bidirectional masked-diffusion MoE) and pipeline-B teacher (block diffusion,
``x0_xt``, the student's vocabulary under another chat template), their tokenizers and the
study's student init, shipped with the package and found by
:func:`tide_plugin.shipped.demo_assets`; and the demo's train / held-out rows, a
deterministic subset of the study corpus (:func:`write_demo_data`).

The shipped files are made by::

    tide study --teachers-only --export DIR      # (on a GPU: study_gpu.sh) then copy DIR/* to
                                                  # tide_plugin/data/study/ (manifest.json included)
    python -m tide_plugin.study.demo              # demo/train.jsonl, demo/heldout.jsonl
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..shipped import DEMO_DATA_DIR

__all__ = ["write_demo_data"]


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


if __name__ == "__main__":
    write_demo_data(*sys.argv[1:2])
