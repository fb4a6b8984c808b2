"""Whole error reasons: JSON faults with position and excerpt, unknown options with
the closest valid one, each in one line from the ``tide`` command."""

from __future__ import annotations

import json

import pytest

from tide_plugin import cli, jsonio


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        # json's own .msg stops at "Invalid control character at": the position is the point
        ('{"calm": {"weight": "a\tb"}}',
         ["Invalid control character at line 1 column 23 (char 22)", """'{"calm": {"weight": "a' >>> '\\tb"}}'"""]),
        ('{"a": 1,}', ["Expecting property name enclosed in double quotes at line 1 column 9", "'{\"a\": 1,' >>> '}'"]),
        ('{"a"', ["Expecting ':' delimiter at line 1 column 5 (char 4)", "(end of text)"]),
        ("{\n  \"a\": [1, 2\n}", ["line 3 column 1"]),
        ("x" * 80, ["Expecting value at line 1 column 1 (char 0)", "'" + "x" * jsonio.EXCERPT + "'..."]),
    ],
)
def test_json_errors_give_the_whole_reason_the_position_and_an_excerpt(text, needles):
    with pytest.raises(ValueError) as err:
        jsonio.loads(text, "--objective_config")
    message = str(err.value)
    assert message.startswith("--objective_config: not valid JSON: ") and "\n" not in message, message
    for needle in needles:
        assert needle in message, message


def _one_line(capsys, argv):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_bad_json_flag_is_one_whole_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TIDE_DEBUG", raising=False)
    err = _one_line(capsys, ["distill", "--objective", "calm", "--teacher_config", '{"dtype": "bfloat16",}'])
    assert "teacher_config: not valid JSON: Expecting property name enclosed in double quotes at line 1 column 22 (char 21)" in err
    err = _one_line(capsys, ["distill", "--objective", "calm", "--objective_config", '{"calm": {"weight": "a\tb"}}'])
    assert "Invalid control character at line 1 column 23 (char 22), near" in err and "\\tb" in err, err


def test_an_unknown_objective_option_from_the_command_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TIDE_DEBUG", raising=False)
    err = _one_line(capsys, ["distill", "--objective", "calm", "--objective_config", '{"calm": {"wieght": 1}}'])
    assert "unknown option 'wieght' for objective 'calm'; did you mean 'weight'? valid: bernoulli_kl, temperature, weight" in err
    assert not (tmp_path / "runs").exists()


def test_a_bad_jsonl_row_names_file_line_column_and_text(tmp_path):
    from tide_plugin.alignment.preprocess import load_jsonl

    good = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    path = tmp_path / "chats.jsonl"
    path.write_text(good + "\n" + '{"messages": [{"role": "user", "content": "a\tb"}]}\n')
    with pytest.raises(ValueError) as err:
        load_jsonl(path)
    assert str(err.value).startswith(f"{path}:2: not valid JSON: Invalid control character at line 1 column 45 (char 44), near ")
    assert str(err.value).endswith("'\\tb\"}]}'")


def test_a_broken_config_json_names_its_file(tmp_path):
    from tide_plugin.checkpoints import checkpoint_layout

    (tmp_path / "config.json").write_text('{"model_type": "llama"')
    with pytest.raises(ValueError, match=r"config.json: not valid JSON: Expecting ',' delimiter at line 1 column 23"):
        checkpoint_layout(tmp_path)
