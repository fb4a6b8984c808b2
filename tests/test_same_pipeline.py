"""The ``same`` pipeline from the command line: `tide preprocess --pipeline same` (one
tokenizer, one template), a `same` preset the objective's requirements pick, so token
objectives without template pairs (kl, reverse_kl, the example plugin's jsd) run in one
command; a preset of another pipeline names the objective's alias that fits it."""

from __future__ import annotations

import json

import pytest

from tide_plugin import cli
from tide_plugin.alignment.preprocess import load_jsonl, preprocess
from tide_plugin.cli.distill import resolve_options
from tide_plugin.offline import tokenizer

ROWS = load_jsonl(__import__("tide_plugin.alignment.preprocess", fromlist=["DEMO_DATA"]).DEMO_DATA)[:12]


def test_same_rows_are_the_students_own_ids_and_labels():
    qwen = tokenizer("qwen")
    same, report = preprocess(ROWS, qwen, qwen, pipeline="same", max_length=None, progress=False)
    cross, _ = preprocess(ROWS, tokenizer("mistral"), qwen, pipeline="cross", max_length=None, progress=False)
    assert same.column_names == ["input_ids", "labels"] and len(same) == 12 and len(cross) >= 8
    own = {(tuple(i), tuple(lab)) for i, lab in zip(same["input_ids"], same["labels"])}
    assert all((tuple(i), tuple(lab)) in own for i, lab in zip(cross["input_ids"], cross["labels"]))  # one encoding
    first = qwen.apply_chat_template(ROWS[0]["messages"], tokenize=False)
    assert same[0]["input_ids"] == qwen(first, add_special_tokens=False)["input_ids"]
    assert -100 in same[0]["labels"] and report.teacher_tokens == report.student_tokens
    assert "teacher tokens cut" not in report.format()
    with pytest.raises(ValueError, match="the same pipeline has one tokenizer"):
        preprocess(ROWS, tokenizer("mistral"), qwen, pipeline="same", progress=False)


@pytest.mark.parametrize(("objective", "preset", "pipeline"), [
    ("jsd", "same", "same"), ("kl", "same", "same"), ("reverse_kl", "same", "same"),
    ("kl_aligned", "shared", "shared"), ("calm", "demo", "cross"), ("ce", "demo", "cross"),
])
def test_the_objective_picks_the_preset_of_its_pipeline(objective, preset, pipeline):
    options, run = resolve_options({"objective": objective})
    assert run["preset"] == preset and options["pipeline"] == pipeline


def test_a_preset_of_another_pipeline_names_the_fitting_alias():
    with pytest.raises(ValueError, match=r"'kl_aligned' is 'kl' on the 'shared' pipeline"):
        resolve_options({"objective": "kl", "preset": "shared"})
    with pytest.raises(ValueError, match=r"'reverse_kl_aligned' is 'reverse_kl' on the 'shared' pipeline"):
        resolve_options({"objective": "reverse_kl", "preset": "shared"})
    with pytest.raises(ValueError, match=r"'kl' is 'kl_aligned' on the 'same' pipeline"):
        resolve_options({"objective": "kl_aligned", "preset": "same"})


@pytest.mark.slow
def test_the_example_plugin_and_a_preprocessed_same_folder_run_in_one_command(tmp_path, capsys):
    common = ["--max_steps", "1", "--logging_steps", "1", "--max_samples", "4", "--per_device_train_batch_size", "2", "--disable_tqdm", "True"]
    assert cli.main(["distill", "--objective", "jsd", *common, "--output_dir", str(tmp_path / "jsd")]) == 0
    said = capsys.readouterr().out
    assert "objective 'jensen_shannon', pipeline 'same'" in said
    assert "jensen_shannon" in json.loads((tmp_path / "jsd" / "metrics.json").read_text())["parts"]
    student_tok = __import__("tide_plugin.shipped", fromlist=["demo_assets"]).demo_assets("B")["student_tokenizer"]
    data = tmp_path / "data-same"
    assert cli.main(["preprocess", "--pipeline", "same", "--student", student_tok, "--output", str(data),
                     "--no-progress"]) == 0
    assert cli.main(["distill", "--objective", "reverse_kl", "--data", str(data), *common,
                     "--output_dir", str(tmp_path / "rkl")]) == 0
    said = capsys.readouterr().out
    assert "pipeline 'same'" in said and "records no" not in said and "not checked" not in said
