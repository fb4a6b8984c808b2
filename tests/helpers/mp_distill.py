"""Run as a script by tests/test_multiprocess.py under `accelerate launch --num_processes 2` (two CPU
processes): a tiny distillation, after which each rank writes a checksum of its student
parameters; then one window's gradient with every objective part, each rank on its half
of a batch. With the argument ``reference`` (one plain process) it writes the gradient of
the whole batch and the batch itself, which the two-process run then splits."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for helpers

import torch  # noqa: E402
from helpers.distill import (  # noqa: E402
    EOS, MASK, ROWS, V, normalisation_config, split_batch, synthetic_rows, tidal_comp_demo_config, window_gradient,
)

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
    seen = []  # the batches this rank collated, in order
    chain = trainer.data_collator.chain
    trainer.data_collator.chain = lambda rows: seen.append(chain(rows)) or seen[-1]
    trainer.train()
    trainer.data_collator.chain = chain
    rank = trainer.args.process_index
    logs = [h for h in trainer.state.log_history if "loss" in h]
    accumulation = trainer.args.gradient_accumulation_steps
    first_batch = trainer.data_collator(synthetic_rows(2, seed=9))["distill_batch"]
    report = {
        "rank": rank,
        "world_size": trainer.args.world_size,
        "global_step": trainer.state.global_step,
        "checksum": checksum(trainer.model),
        "initial": initial,
        "logged_steps": [h["step"] for h in trainer.state.log_history if "loss" in h],
        "noise_masked": first_batch.masked.tolist(),
        "local_masked_tokens": [
            sum(b.stats["masked_tokens"] for b in seen[i * accumulation : (i + 1) * accumulation]) for i in range(len(logs))
        ],
        "logged_masked_tokens": [h["stats/masked_tokens"] for h in logs],
        "logged_ce": [h["ce"] for h in logs],
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))


def gradients(out: str, reference: bool) -> None:
    """One window of 4 rows: the whole batch in one process (``reference``), or rows
    [0, 1] on rank 0 and [2, 3] on rank 1 through DDP; token and chunk objectives."""
    from tide_plugin.training.normalise import unit_count, window_units

    for pipeline in ("same", "cross"):
        cfg = normalisation_config(Path(out, f"grad_{pipeline}"), pipeline)
        trainer = build_trainer(
            cfg,
            student=tiny_qwen3(V, seed=0),
            teacher_model=tiny_qwen3_moe(V, seed=1),
            train_dataset=ROWS[pipeline](8, seed=4),
            student_mask_id=MASK,
            student_eos_id=EOS,
        )
        trainer.model.train()
        ref_file = Path(out, f"reference_{pipeline}.pt")
        if reference:
            full = trainer.data_collator(ROWS[pipeline](4, seed=5))["distill_batch"]
            grad = window_gradient(trainer, trainer.model, [full])
            torch.save({"batch": full, "grad": grad}, ref_file)
            continue
        full = torch.load(ref_file, weights_only=False)["batch"]
        rank = trainer.args.process_index
        halves = [split_batch(full, [0, 1]), split_batch(full, [2, 3])]
        differ = {u: [int(unit_count(h, u)) for h in halves] for u in window_units(trainer._tide_units)}
        model = trainer.accelerator.prepare_model(trainer.model)
        grad = window_gradient(trainer, model, [halves[rank]])
        torch.save({"grad": grad, "counts": differ, "wrapped": type(model).__name__}, Path(out, f"grad_{pipeline}_rank{rank}.pt"))


if __name__ == "__main__":
    if sys.argv[2:] == ["reference"]:
        gradients(sys.argv[1], reference=True)
    else:
        main(sys.argv[1])
        gradients(sys.argv[1], reference=False)
