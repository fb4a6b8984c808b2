"""Nothing lost, nothing silently wrong: one run owns an output folder, an overwrite
removes what the run before left, a resume continues only its own run, the output
folder is checked before any work, Ctrl-C / SIGTERM save and say how to resume, and a
resumed run's curves cover the whole run."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.distill import EOS, MASK, V, synthetic_rows, tidal_comp_demo_config

from tide_plugin import cli
from tide_plugin.cli.distill_run import RUN_FILE, check_resume, check_writable, clear_previous_run, resume_command
from tide_plugin.tiny import tiny_qwen3

DEMO = ["--max_samples", "8", "--logging_steps", "1", "--per_device_train_batch_size", "2", "--disable_tqdm", "True"]


def _record(folder: Path, run_id: str, step: int | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_FILE).write_text(json.dumps({"id": run_id, "objective": "calm", "max_steps": 12, "created": "t"}))
    if step is not None:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))


def test_resume_refuses_another_runs_checkpoint_and_a_max_steps_it_has_passed(tmp_path):
    out = tmp_path / "run"
    _record(out, "aaaa")
    _record(out / "checkpoint-12", "bbbb", step=12)
    with pytest.raises(ValueError, match=r"belongs to run bbbb .* but output_dir .* holds run aaaa"):
        check_resume(str(out / "checkpoint-12"), str(out), 20)
    _record(out, "bbbb")
    with pytest.raises(ValueError, match=r"--max_steps 4 is not above the step of .*checkpoint-12.* \(12\)"):
        check_resume(str(out / "checkpoint-12"), str(out), 4)
    assert check_resume(str(out / "checkpoint-12"), str(out), 13)["id"] == "bbbb"


def test_overwrite_removes_the_previous_runs_checkpoints_and_report(tmp_path):
    out = tmp_path / "run"
    for step in (4, 8, 12):
        _record(out / f"checkpoint-{step}", "old", step=step)
    for name in ("metrics.json", "loss.png", RUN_FILE, "notes.txt"):
        (out / name).write_text("{}")
    removed = clear_previous_run(str(out))
    assert removed == ["checkpoint-4", "checkpoint-8", "checkpoint-12", "tide_run.json", "metrics.json", "loss.png"]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # what is not a run's is left alone


def test_an_unwritable_output_dir_is_one_line_before_any_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TIDE_DEBUG", raising=False)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match=r"output_dir '.*file/run' cannot be written: Not a directory \(ENOTDIR\)"):
        check_writable(str(blocker / "run"))
    import tide_plugin.cli.distill_models as distill_models

    def no_tokenizers(spec):  # the check runs before any tokenizer loads
        raise AssertionError(f"tokenizer {spec} loaded before the output check")

    monkeypatch.setattr(distill_models, "load_tokenizer", no_tokenizers)
    assert cli.main(["distill", "--output_dir", str(blocker / "run"), "--max_steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be written: Not a directory (ENOTDIR)" in err
    check_writable(str(tmp_path / "new" / "run"))
    assert not (tmp_path / "new").exists()  # checked, nothing left behind


def test_negative_values_reach_the_option_check():
    assert cli.join_negative_values(["distill", "--learning_rate", "-1e-3", "--seed", "3"]) == \
        ["distill", "--learning_rate=-1e-3", "--seed", "3"]
    assert cli.join_negative_values(["--x", "-.5E+2", "-v"]) == ["--x=-.5E+2", "-v"]


def test_not_a_model_folder_is_one_line_before_any_tokenizer(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TIDE_DEBUG", raising=False)
    (tmp_path / "teacher").mkdir()
    import tide_plugin.cli.distill_models as distill_models

    monkeypatch.setattr(distill_models, "load_tokenizer", lambda spec: pytest.fail(f"tokenizer {spec} loaded"))
    argv = ["distill", "--teacher_model_name_or_path", str(tmp_path / "teacher"), "--objective", "calm",
            "--output_dir", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"not a model folder: {tmp_path / 'teacher'} (no config.json" in err and err.count("\n") == 1


def test_resume_command_replaces_an_earlier_resume():
    line = resume_command(["--max_steps", "9", "--resume_from_checkpoint", "True", "--output_dir", "o p"], "o p/checkpoint-3")
    assert line == "tide distill --max_steps 9 --output_dir 'o p' --resume_from_checkpoint 'o p/checkpoint-3'"


def test_a_tied_weight_is_not_a_missing_key_on_resume(tmp_path, monkeypatch):
    import transformers.trainer as hf_trainer

    from tide_plugin.training import build_trainer

    cfg = tidal_comp_demo_config(tmp_path / "run", objective="none", use_comp_demo=False, max_steps=1,
                                 save_strategy="steps", save_steps=1)
    trainer = build_trainer(cfg, student=tiny_qwen3(V, seed=0), teacher_model=None,
                            train_dataset=synthetic_rows(8), student_mask_id=MASK, student_eos_id=EOS)
    trainer.train()
    warned = []
    monkeypatch.setattr(hf_trainer.logger, "warning", lambda msg, *a, **k: warned.append(str(msg)))
    trainer.model.lm_head.weight.data.zero_()  # untied by nothing: the same tensor as the embedding
    trainer._load_from_checkpoint(str(tmp_path / "run" / "checkpoint-1"))
    assert not [w for w in warned if "missing keys" in w], warned
    model = trainer.model
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert model.lm_head.weight.abs().sum() > 0  # the embedding (and so the head) came back


# -- real runs of `tide distill` on the shipped demo models ------------------------------------
@pytest.mark.slow
def test_overwrite_then_resume_continues_only_the_new_run(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TIDE_DEBUG", raising=False)
    out = str(tmp_path / "run")
    common = ["distill", *DEMO, "--output_dir", out]
    assert cli.main([*common, "--max_steps", "3", "--save_steps", "1"]) == 0  # an old run: checkpoint-1..3
    old_id = json.loads((Path(out) / RUN_FILE).read_text())["id"]
    assert cli.main([*common, "--max_steps", "2", "--overwrite_output_dir", "True"]) == 0
    said = capsys.readouterr().out
    assert re.search(r"--overwrite_output_dir: removed checkpoint-1, checkpoint-2, checkpoint-3, tide_run.json, "
                     rf"metrics.json, loss.png, tide_config.json of run {old_id} ", said), said
    assert not list(Path(out).glob("checkpoint-*"))
    assert json.loads((Path(out) / RUN_FILE).read_text())["id"] != old_id
    assert cli.main([*common, "--max_steps", "4", "--resume_from_checkpoint", "True"]) == 2  # nothing of its own
    assert "holds no checkpoint-* folder" in capsys.readouterr().err


@pytest.mark.slow
def test_resumed_curve_covers_the_whole_run(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["distill", *DEMO, "--output_dir", str(out), "--max_steps", "4"]
    assert cli.main([*common, "--save_steps", "2"]) == 0  # held-out points at steps 0-4, checkpoints 2 and 4
    first = json.loads((out / "metrics.json").read_text())["heldout_curve"]
    assert [s for s, _ in first] == [0, 1, 2, 3, 4]
    assert cli.main([*common, "--resume_from_checkpoint", str(out / "checkpoint-2")]) == 0
    assert "(resuming " in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert [s for s, _ in metrics["heldout_curve"]] == [0, 1, 2, 3, 4]
    assert metrics["heldout_curve"][:3] == first[:3]  # read back from the checkpoint
    assert [h["step"] for h in metrics["history"]] == [1, 2, 3, 4]


def _start(args, log):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("TIDE_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "tide_plugin.cli", "distill", *args], stdout=log,
                            stderr=subprocess.STDOUT, env=env)


def _wait_for(path: Path, needle: str, proc, timeout: float = 300) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if needle in path.read_text():
            return
        assert proc.poll() is None, path.read_text()
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"{needle!r} never appeared:\n{path.read_text()}")


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_a_checkpoint_and_says_how_to_resume(tmp_path, sig, code):
    out = tmp_path / "run"
    log_path = tmp_path / "log.txt"
    args = [*DEMO, "--max_steps", "400", "--output_dir", str(out)]
    with open(log_path, "w") as log:
        proc = _start(args, log)
        _wait_for(log_path, "1/400", proc)  # the first step's row of the console table
        proc.send_signal(sig)
        assert proc.wait(timeout=300) == code
    text = log_path.read_text()
    assert "Traceback" not in text
    found = re.search(r"^tide distill: interrupted at step (\d+); resume with: (tide distill .*)$", text, re.M)
    assert found, text
    step, command = int(found.group(1)), shlex.split(found.group(2))
    checkpoint = out / f"checkpoint-{step}"
    assert command[-2:] == ["--resume_from_checkpoint", str(checkpoint)]
    assert (checkpoint / "trainer_state.json").is_file() and (checkpoint / RUN_FILE).is_file()
    if sig != signal.SIGINT:
        return
    with open(log_path, "w") as log:  # the printed command, two more steps
        proc = _start([*command[2:], "--max_steps", str(step + 2)], log)
        assert proc.wait(timeout=600) == 0, log_path.read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"] == str(checkpoint)
    assert [h["step"] for h in metrics["history"]] == list(range(1, step + 3))
    assert metrics["train"]["train_loss_scope"] == f"whole run (steps 1-{step + 2})"
    assert (out / "model.safetensors").is_file() and "missing keys" not in log_path.read_text()
