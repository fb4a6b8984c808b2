"""`tide` reports bad input in one line (exit 2), naming the value and what is allowed."""

from __future__ import annotations

import pytest

from tide_plugin import cli


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["distill", "--demo_ratio", "1.5"], "demo_ratio 1.5 must lie in (0, 1)"),
        (["distill", "--distill_mode", "revers_alm"], "unknown objective 'revers_alm'. Did you mean 'reverse_alm'?"),
        (["distill", "--concat_order", "xt_xt"], "concat_order 'xt_xt' is not one of"),
        (
            ["distill", "--model_name_or_path", "/nonexistent/student", "--max_steps", "1"],
            "student checkpoint '/nonexistent/student' is not a local directory",
        ),
        (["preprocess", "--student", "org/some-model", "--output", "unused"], "neither 'offline:<name>'"),
    ],
)
def test_bad_input_is_one_line_without_traceback(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TIDE_DEBUG", raising=False)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tide {argv[0]}: ") and message in err, err
    assert "Traceback" not in err


def test_debug_env_shows_the_traceback(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TIDE_DEBUG", "1")
    with pytest.raises(ValueError, match="demo_ratio 1.5"):
        cli.main(["distill", "--demo_ratio", "1.5"])


def test_teacher_checkpoint_must_be_local(tmp_path):
    from tide_plugin.teachers.base import TeacherConfig, load_teacher_model

    with pytest.raises(FileNotFoundError, match="teacher checkpoint 'org/teacher' is not a local directory"):
        load_teacher_model("org/teacher", TeacherConfig())


# -- nothing lost or wrong in silence (recipe issue, item 5) ----------------------------------
def _one_line_error(capsys, argv, *needles):
    from tide_plugin import cli as _cli

    assert _cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"tide {argv[0]}: error: ") or err.startswith("tide: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["distill", "--max_steps", "0"], ["max_steps 0 trains nothing"]),
        (["distill", "--learning_rate", "-1"], ["learning_rate must be > 0, got -1.0"]),
        (["distill", "--learning_rate", "-1e-3"], ["learning_rate must be > 0, got -0.001"]),
        (["distill", "--learning_rate", "0"], ["learning_rate must be > 0, got 0.0 (a zero learning rate trains nothing)"]),
        (["distill", "--block_size", "7"], ["max_length (192) must be a multiple of block_size (7)"]),  # the demo preset's
        (["distill", "--distill_mode", "calm", "--preset", "shared"],
         ["objective 'calm' needs the 'cross' pipeline", "--preset shared runs the 'shared' pipeline"]),
        (["distill", "--alm_wieght", "1"], ["unrecognized arguments: --alm_wieght", "did you mean '--alm_weight'?"]),
        (["distill", "--preset", "demoo"], ["preset 'demoo' is not one of", "did you mean 'demo'?"]),
        (["distill", "--bf16", "maybe"], ["--bf16"]),
        (["distil", "--max_steps", "1"], ["unknown command 'distil'", "did you mean 'distill'?"]),
        (["distill", "--dataset_args", "missing.jsonl"], ["dataset 'missing.jsonl' is neither a chat JSONL"]),
        (["distill", "--resume_from_checkpoint", "True"], ["holds no checkpoint-* folder to resume from"]),
        (["distill", "--demo_arms", "none,calmm"], ["unknown objective 'calmm'", "Did you mean 'calm'?"]),
        (["distill", "--demo_arms", "kl_aligned"], ["kl_aligned", "cross"]),  # an arm runs on the run's pipeline
        (["distill", "--preset", "none", "--demo_arms", "calm"], ["--demo_arms 'calm' compares students on held-out",
                                                                "give --heldout chat.jsonl"]),
    ],
)
def test_usage_errors_are_one_line_exit_2_before_heavy_work(argv, needles, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TIDE_DEBUG", raising=False)
    _one_line_error(capsys, argv, *needles)
    assert not (tmp_path / "runs").exists()  # nothing written: the checks run before any work


def test_raw_file_with_load_preprocessed_data_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "chats.jsonl").write_text('{"messages": []}\n')
    _one_line_error(capsys, ["distill", "--dataset_args", "chats.jsonl", "--load_preprocessed_data", "True"],
                    "--load_preprocessed_data True, but 'chats.jsonl' is a file")


def test_output_dir_holding_a_finished_run_is_refused(tmp_path):
    from tide_plugin.cli.distill_checks import check_output_dir

    out = tmp_path / "run"
    check_output_dir(str(out), overwrite=False, resume=False)  # absent: fine
    out.mkdir()
    (out / "notes.txt").write_text("x")
    check_output_dir(str(out), overwrite=False, resume=False)  # nothing of a run: fine
    (out / "checkpoint-5").mkdir()
    with pytest.raises(ValueError, match=r"already holds checkpoints \(checkpoint-5\)"):
        check_output_dir(str(out), overwrite=False, resume=False)
    (out / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="already holds a finished run .*--overwrite_output_dir"):
        check_output_dir(str(out), overwrite=False, resume=False)
    check_output_dir(str(out), overwrite=True, resume=False)
    check_output_dir(str(out), overwrite=False, resume=True)


def test_errors_are_not_glued_to_a_progress_bar(capsys):
    import sys

    from tqdm import tqdm

    from tide_plugin import cli as _cli

    bar = tqdm(total=6, file=sys.stderr, mininterval=0)
    bar.update(1)
    _cli._error_line("tide eval", "something is wrong")
    err = capsys.readouterr().err
    assert "\ntide eval: error: something is wrong\n" in err, repr(err)


def test_make_chat_demo_writes_to_the_working_directory(tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path

    import tide_plugin

    root = Path(__file__).resolve().parent.parent  # a development script, not in the package
    spec = importlib.util.spec_from_file_location("make_chat_demo", root / "scripts" / "make_chat_demo.py")
    make_chat_demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_chat_demo)
    shipped = Path(tide_plugin.__file__).with_name("data") / "chat_demo.jsonl"
    before = shipped.stat().st_mtime_ns
    monkeypatch.chdir(tmp_path)
    assert make_chat_demo.main(["--count", "5"]) == 0
    assert len((tmp_path / "chat_demo.jsonl").read_text().splitlines()) == 5
    assert make_chat_demo.main(["--count", "5"]) == 2  # never replaces a file unasked
    assert make_chat_demo.main(["--count", "6", "--overwrite"]) == 0
    assert shipped.stat().st_mtime_ns == before
    assert make_chat_demo.main(["--out", "all.jsonl"]) == 0
    assert (tmp_path / "all.jsonl").read_bytes() == shipped.read_bytes()  # it made the shipped file


def _preprocessed(tmp_path, pipeline, teacher):
    from tide_plugin import cli as _cli

    rows = tmp_path / "chats.jsonl"
    rows.write_text('{"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]}\n')
    out = tmp_path / f"data-{pipeline}"
    assert _cli.main(["preprocess", "--input", str(rows), "--output", str(out), "--pipeline", pipeline,
                      "--student", "offline:qwen", "--teacher", teacher, "--no-progress"]) == 0
    return out


def test_dataset_aligned_with_other_tokenizers_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("TIDE_DEBUG", raising=False)
    data = _preprocessed(tmp_path, "cross", "offline:mistral")
    capsys.readouterr()
    _one_line_error(capsys, ["distill", "--data", str(data), "--student_tokenizer", "offline:qwen",
                             "--teacher_tokenizer", "offline:qwen", "--output_dir", str(tmp_path / "out")],
                    "aligned with the teacher tokenizer 'offline:mistral'", "this run's teacher tokenizer is 'offline:qwen'")
    assert not (tmp_path / "out").exists()


def test_shared_dataset_fed_to_a_cross_run_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("TIDE_DEBUG", raising=False)
    data = _preprocessed(tmp_path, "shared", "offline:qwen")
    capsys.readouterr()
    _one_line_error(capsys, ["distill", "--data", str(data), "--output_dir", str(tmp_path / "out")],
                    "was preprocessed for the 'shared' pipeline, but this run uses the 'cross' pipeline")


@pytest.mark.slow
def test_aligning_in_process_says_what_was_dropped_and_applies_reference_data_options(tmp_path):
    from tide_plugin.cli.distill_data import load_run_dataset
    from tide_plugin.offline import tokenizer
    from tide_plugin.training import DistillConfig

    toks = {"student": (tokenizer("qwen"), "offline:qwen"), "teacher": (tokenizer("mistral"), "offline:mistral")}
    cfg = DistillConfig(output_dir=str(tmp_path), use_cpu=True, objective="reverse_calm", max_length=32, block_size=32)
    ds, notes = load_run_dataset({"max_samples": 40}, cfg, toks)
    assert notes[0].startswith(f"aligned {len(ds)} of 40 conversations (cross pipeline); dropped ")
    assert "whose prompt fills max_length 32" in notes[0] and "cut at max_length 32" in notes[0]
    cfg = DistillConfig(output_dir=str(tmp_path), use_cpu=True, objective="reverse_calm", max_length=128)
    cut, _ = load_run_dataset({"max_samples": 40}, cfg, toks)
    filtered, notes = load_run_dataset({"max_samples": 40, "truncation": "filter"}, cfg, toks)
    assert "longer than max_length 128 (--truncation filter)" in notes[0]
    assert 0 < len(filtered) < len(cut) and all(len(r) <= 128 for r in filtered["input_ids"])
    unmasked, _ = load_run_dataset({"max_samples": 4, "mask_prompt_loss": False}, cfg, toks)
    assert all(r["labels"] == r["input_ids"] for r in unmasked)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["distill", "--truncation", "filtr"], "did you mean 'filter'?"),
        (["distill", "--pipeline", "crosss"], "pipeline 'crosss' is not one of ('same', 'shared', 'cross') (did you mean 'cross'?)"),
        (["distill", "--concat_order", "x0xt"], "(did you mean 'x0_xt'?)"),
    ],
)
def test_unknown_choices_get_did_you_mean(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TIDE_DEBUG", raising=False)
    _one_line_error(capsys, argv, needle)
