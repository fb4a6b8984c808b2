"""Run by tests/test_multiprocess.py under `accelerate launch --cpu --num_processes 2`:
a tiny distillation; each rank writes a checksum of its student parameters."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from _distill_helpers import EOS, MASK, V, synthetic_rows, tidal_comp_demo_config  # noqa: E402

from tide_plugin.training import build_trainer  # noqa: E402
from tide_plugin.tiny import tiny_qwen3, tiny_qwen3_moe  # noqa: E402


def checksum(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().to(torch.float64).cpu().numpy().tobytes())
    return h.hexdigest()


def main(out: str) -> None:
    cfg = tidal_comp_demo_config(out, max_steps=3, per_device_train_batch_size=2)
    initial = checksum(tiny_qwen3(V, seed=0))
    trainer = build_trainer(
        cfg,
        student=tiny_qwen3(V, seed=0),
        teacher_model=tiny_qwen3_moe(V, seed=1),
        train_dataset=synthetic_rows(64, seed=2),
        student_mask_id=MASK,
        student_eos_id=EOS,
    )
    trainer.train()
    rank = trainer.args.process_index
    first_batch = trainer.data_collator(synthetic_rows(2, seed=9))["distill_batch"]
    report = {
        "rank": rank,
        "world_size": trainer.args.world_size,
        "global_step": trainer.state.global_step,
        "checksum": checksum(trainer.model),
        "initial": initial,
        "logged_steps": [h["step"] for h in trainer.state.log_history if "loss" in h],
        "noise_masked": first_batch.masked.tolist(),
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
