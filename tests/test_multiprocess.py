"""Two processes on CPU: the run completes, the student parameters are synchronised
across ranks, and 2 processes x b rows give the gradient of 1 process x 2b rows (CE and
every objective part, token and chunk objectives, CompDemo on).

accelerate 1.x starts a single process for ``accelerate launch --cpu --num_processes 2``
(its ``--cpu`` path is the simple launcher); ``--multi_gpu --num_processes 2`` goes
through torchrun and, with no GPU present, runs two CPU processes over gloo. The
trainer itself is told ``use_cpu=True``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_cpu_processes_train_in_sync(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    # the reference: one plain process, the whole batch in one window
    proc = subprocess.run([sys.executable, str(HERE / "helpers" / "mp_distill.py"), str(tmp_path), "reference"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        str(HERE / "helpers" / "mp_distill.py"), str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert [r["global_step"] for r in reports] == [3, 3]
    assert reports[0]["checksum"] == reports[1]["checksum"]  # DDP kept the replicas identical
    assert reports[0]["checksum"] != reports[0]["initial"]  # and they trained
    assert reports[0]["noise_masked"] != reports[1]["noise_masked"]  # ranks draw their own noise
    # counters are summed over both ranks' batches, parts averaged over ranks: every rank logs the same
    both = [a + b for a, b in zip(reports[0]["local_masked_tokens"], reports[1]["local_masked_tokens"])]
    assert reports[0]["logged_masked_tokens"] == reports[1]["logged_masked_tokens"] == both
    assert reports[0]["logged_ce"] == reports[1]["logged_ce"]
    import torch

    for pipeline in ("same", "cross"):
        reference = torch.load(tmp_path / f"reference_{pipeline}.pt", weights_only=False)["grad"]
        ranks = [torch.load(tmp_path / f"grad_{pipeline}_rank{r}.pt", weights_only=False) for r in (0, 1)]
        assert ranks[0]["wrapped"] == "DistributedDataParallel"
        for unit, (a, b) in ranks[0]["counts"].items():
            assert a != b or unit == "sequences", (pipeline, unit)  # the ranks hold different unit counts
        assert reference.abs().max() > 0
        for r in ranks:
            torch.testing.assert_close(r["grad"], reference, rtol=1e-4, atol=1e-6)
