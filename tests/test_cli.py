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
