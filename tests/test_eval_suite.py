"""``tide eval --suite``: suite files, the results table, reruns, one-line errors,
and the same scores from two processes as from one (offline, tiny student)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers.eval_fixtures import GSM8K, HELLASWAG, MMLU, write_paper_fixtures

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# ------------------------------------------------------------------ suites


def test_the_paper_suite_is_the_papers_protocol():
    from tide_plugin.eval.suite import load_suite

    suite = load_suite("paper")
    rows = {t.name: (t.max_new_tokens, t.steps, t.num_fewshot) for t in suite.tasks}
    assert rows == {
        "gsm8k_cot": (256, 256, 0), "minerva_math": (256, 256, 0), "bbh": (256, 256, 3), "mmlu_pro": (256, 256, 0),
        "hellaswag_gen": (3, 3, 0), "mmlu_generative_dream": (3, 3, 0), "humaneval_instruct": (256, 256, 0),
        "mbpp_instruct": (256, 256, 0),
    }
    assert all(t.block_size == 32 and t.cfg_scale == 0 and t.chat_template and t.think_injection for t in suite.tasks)
    # the code tasks are ours (sandboxed executor), never lm-eval's unsafe ones
    assert {t.name: t.task for t in suite.tasks}["mbpp_instruct"] == "mbpp_offline_instruct"
    assert {t.name: t.task for t in suite.tasks}["humaneval_instruct"] == "humaneval_offline_instruct"
    for column, scores in suite.published.items():  # the printed averages are the means of the printed rows
        assert sum(scores.values()) / 8 == pytest.approx(suite.published_average[column], abs=0.011), column
    assert suite.published_average["Cross TIDE-Cross"] == 34.20 and suite.published_average["BD3LM"] == 32.67


def test_bad_suites_are_named(tmp_path):
    from tide_plugin.eval.suite import load_suite

    with pytest.raises(ValueError, match="did you mean 'paper'"):
        load_suite("papr")
    bad = tmp_path / "s.yaml"
    bad.write_text(yaml.safe_dump({"tasks": [{"name": "x", "max_new_tokens": 4, "step": 4, "num_fewshot": 0,
                                              "metric": "exact_match,none"}]}))
    with pytest.raises(ValueError, match="unknown keys 'step' \\(did you mean 'steps'\\?\\)"):
        load_suite(str(bad))
    bad.write_text(yaml.safe_dump({"tasks": [{"name": "x", "max_new_tokens": 4, "steps": 8, "num_fewshot": 0,
                                              "metric": "exact_match,none"}]}))
    with pytest.raises(ValueError, match="steps \\(8\\) must be <= max_new_tokens \\(4\\)"):
        load_suite(str(bad))


def test_the_table_weights_group_members_by_size_and_averages_rows():
    from tide_plugin.eval.report import build_table, task_score, to_markdown
    from tide_plugin.eval.suite import suite_from_dict

    suite = suite_from_dict({
        "name": "t",
        "tasks": [{"name": "a", "label": "A", "max_new_tokens": 4, "steps": 4, "num_fewshot": 0, "metric": "m,f"},
                  {"name": "b", "label": "B", "max_new_tokens": 4, "steps": 4, "num_fewshot": 0, "metric": "m,f"}],
        "published": {"paper": {"a": 10.0, "b": 30.0}},
    })
    results = {"results": {"x": {"m,f": 1.0}, "y": {"m,f": 0.0}}, "n-samples": {"x": {"effective": 1}, "y": {"effective": 3}}}
    assert task_score(suite.tasks[0], results, ["x", "y"]) == (25.0, 4)
    with pytest.raises(ValueError, match="no 'm,g'"):
        task_score(suite_from_dict({"tasks": [{"name": "a", "max_new_tokens": 1, "steps": 1, "num_fewshot": 0,
                                               "metric": "m,g"}]}).tasks[0], results, ["x"])
    table = build_table(suite, {"a": {"score": 25.0, "n": 4}, "b": {"score": 75.0, "n": 2}})
    assert table["columns"] == ["paper", "ours"] and table["average"] == {"paper": 20.0, "ours": 50.0}
    md = to_markdown(table)
    assert "| A | 10.00 | 25.00 |" in md and "| Avg | 20.00 | 50.00 |" in md


# --------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from tide_plugin.eval.taskdefs import TaskCatalog

    catalog = TaskCatalog()
    names = lambda group: [catalog.config(leaf)["dataset_name"] for leaf in catalog.leaves(group)]  # noqa: E731
    root = write_paper_fixtures(tmp_path_factory.mktemp("eval-data"), names("bbh"), names("minerva_math"))
    rows = [dict(MMLU, question=f"{MMLU['question']} ({i})", answer=i % 4) for i in range(5)]
    (root / "cais" / "mmlu" / "all" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows = [dict(GSM8K, question=f"{GSM8K['question']} ({i})") for i in range(3)]  # more rows than processes
    (root / "openai" / "gsm8k" / "main" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _suite_file(tmp_path: Path, only: tuple[str, ...] = ()) -> Path:
    """The paper suite, generation cut to 4 tokens / 2 steps so a CPU run takes seconds."""
    from tide_plugin.eval.suite import SUITES_DIR

    data = yaml.safe_load((SUITES_DIR / "paper.yaml").read_text())
    data["name"] = "small"
    data["tasks"] = [t for t in data["tasks"] if not only or t["name"] in only]
    for t in data["tasks"]:
        t["max_new_tokens"], t["steps"] = min(t["max_new_tokens"], 4), min(t["steps"], 2)
    for col in data["published"]:
        data["published"][col] = {k: v for k, v in data["published"][col].items() if k in {t["name"] for t in data["tasks"]}}
    data.pop("published_average")
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _eval_cmd(student_dir, data_dir, suite, out, *extra) -> list[str]:
    return ["eval", "--model", str(student_dir), "--suite", str(suite), "--data-dir", str(data_dir),
            "--dtype", "float32", "--batch-size", "4", "--output-dir", str(out), "--log-samples", *extra]


@pytest.mark.slow
def test_the_paper_suite_runs_all_eight_tasks_and_prints_the_table(student_dir, data_dir, tmp_path, capsys):
    from tide_plugin.cli import main

    suite, out = _suite_file(tmp_path), tmp_path / "out"
    assert main(_eval_cmd(student_dir, data_dir, suite, out, "--limit", "1")) == 0
    printed = capsys.readouterr().out
    table = json.loads((out / "small_table.json").read_text())
    assert [r["label"] for r in table["rows"]] == ["GSM8K", "MATH", "BBH", "MMLU-Pro", "HellaSwag", "MMLU",
                                                   "HumanEval", "MBPP"]
    assert table["columns"][0] == "AR" and table["columns"][-1] == "ours"
    assert [r["n"] for r in table["rows"]] == [1, 7, 27, 14, 1, 1, 1, 1]  # groups: one row per subtask
    assert all(0.0 <= r["ours"] <= 100.0 for r in table["rows"])
    assert "| Benchmark | AR | BD3LM |" in printed and "| Avg |" in printed
    assert (out / "small_table.md").read_text() in printed
    # every prompt went through the chat template with the empty think block; answers come back without it
    sample = json.loads((out / "samples_gsm8k_cot.jsonl").read_text().splitlines()[0])
    assert sample["arguments"][0][0].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert "<think>" not in sample["resps"][0][0]


@pytest.mark.slow
def test_a_rerun_skips_finished_tasks_unless_overwrite(student_dir, data_dir, tmp_path, capsys):
    from tide_plugin.cli import main

    suite, out = _suite_file(tmp_path, only=("mmlu_generative_dream", "hellaswag_gen")), tmp_path / "out"
    assert main(_eval_cmd(student_dir, data_dir, suite, out, "--limit", "2", "--no-think-injection")) == 0
    first = (out / "mmlu_generative_dream.json").stat().st_mtime_ns
    sample = json.loads((out / "samples_hellaswag_gen.jsonl").read_text().splitlines()[0])
    assert "<think>" not in sample["arguments"][0][0]
    (out / "hellaswag_gen.json").unlink()
    capsys.readouterr()
    assert main(_eval_cmd(student_dir, data_dir, suite, out, "--limit", "2")) == 0
    err = capsys.readouterr().err
    assert "mmlu_generative_dream: results exist" in err and "hellaswag_gen: results exist" not in err
    assert (out / "mmlu_generative_dream.json").stat().st_mtime_ns == first
    assert main(_eval_cmd(student_dir, data_dir, suite, out, "--limit", "2", "--overwrite")) == 0
    assert (out / "mmlu_generative_dream.json").stat().st_mtime_ns != first


# ------------------------------------------------- offline: skip, partial, limited


def test_hub_access_is_off_for_the_run_unless_online_and_restored(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    from tide_plugin.eval.runtime import hub_access

    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    with hub_access(online=False):  # the libraries were imported before: their copies are set too
        assert os.environ["HF_HUB_OFFLINE"] == os.environ["HF_DATASETS_OFFLINE"] == "1"
        assert huggingface_hub.constants.HF_HUB_OFFLINE is True and datasets.config.HF_HUB_OFFLINE is True
    assert "HF_HUB_OFFLINE" not in os.environ and huggingface_hub.constants.HF_HUB_OFFLINE is False
    with hub_access(online=True):
        assert "HF_HUB_OFFLINE" not in os.environ and datasets.config.HF_HUB_OFFLINE is False


def test_offline_a_missing_dataset_is_known_at_once(tmp_path, monkeypatch):
    """Without --online no hub client retries: the missing dataset is reported in
    well under a second (online without a network it took ~23 s of retries)."""
    import time

    from tide_plugin.eval.runtime import hub_access
    from tide_plugin.eval.taskdefs import MissingDataError, TaskCatalog

    catalog = TaskCatalog()
    with hub_access(online=False):
        start = time.monotonic()
        with pytest.raises(MissingDataError) as err:
            catalog.build("gsm8k_cot", tmp_path)
        assert time.monotonic() - start < 5.0
    assert (err.value.task, err.value.dataset) == ("gsm8k_cot", "openai/gsm8k/main")


def test_a_partial_and_limited_table_says_so():
    from tide_plugin.eval.report import build_table, to_markdown
    from tide_plugin.eval.suite import suite_from_dict

    task = {"max_new_tokens": 4, "steps": 4, "num_fewshot": 0, "metric": "m,f"}
    suite = suite_from_dict({"name": "t", "tasks": [{"name": "a", "label": "A", **task}, {"name": "b", "label": "B", **task},
                                                    {"name": "c", "label": "C", **task}],
                             "published": {"paper": {"a": 10.0, "b": 30.0, "c": 20.0}}})
    table = build_table(suite, {"a": {"score": 50.0, "n": 2, "n_total": 164}, "c": {"score": 40.0, "n": 3, "n_total": 3}},
                        skipped={"b": "openai/gsm8k/main"})
    assert table["partial"] and table["skipped"] == {"b": "openai/gsm8k/main"}
    assert [r["limited"] for r in table["rows"]] == [True, False, False] and table["average"]["ours"] is None
    md = to_markdown(table)
    assert md.startswith("**Partial table**: 1 of 3 tasks skipped for lack of local data: B (openai/gsm8k/main).")
    assert "| A (n=2 of 164) | 10.00 | 50.00 |" in md and "| B | 30.00 | - |" in md and "| C | 20.00 | 40.00 |" in md
    assert "n=a of b: scored on a of the task's b documents (--limit)" in md
    whole = to_markdown(build_table(suite, {k: {"score": 1.0, "n": 3, "n_total": 3} for k in "abc"}))
    assert "Partial" not in whole and "n=" not in whole and "| Avg | 20.00 | 1.00 |" in whole


def test_tasks_scored_on_part_of_their_documents_are_marked_in_lm_evals_table():
    from lm_eval.utils import make_table

    from tide_plugin.eval.cli import mark_limited

    results = {"results": {"humaneval_offline": {"alias": "humaneval_offline", "pass@1,create_test": 0.5},
                           "tide_smoke": {"alias": "tide_smoke", "exact_match,none": 1.0}},
               "n-samples": {"humaneval_offline": {"original": 164, "effective": 2},
                             "tide_smoke": {"original": 4, "effective": 4}},
               "versions": {}, "n-shot": {}, "configs": {}}
    assert mark_limited(results) == ["humaneval_offline"]
    printed = make_table(results)
    assert "humaneval_offline (n=2 of 164)" in printed and "tide_smoke (n=" not in printed


@pytest.fixture(scope="module")
def partial_data_dir(tmp_path_factory):
    """MMLU (5 rows) and HellaSwag only: the paper suite's other datasets are missing."""
    root = tmp_path_factory.mktemp("partial-data")
    rows = {("cais/mmlu", "all", "test"): [dict(MMLU, question=f"{MMLU['question']} ({i})", answer=i % 4) for i in range(5)],
            ("Rowan/hellaswag", "default", "validation"): [HELLASWAG]}
    for (dataset, name, split), items in rows.items():
        folder = root / dataset / name
        folder.mkdir(parents=True)
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    return root


@pytest.mark.slow
def test_offline_the_suite_skips_tasks_without_data_and_writes_a_partial_table(
        student_dir, partial_data_dir, tmp_path, capsys, monkeypatch):
    from tide_plugin.cli import main

    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    suite = _suite_file(tmp_path, only=("gsm8k_cot", "mmlu_generative_dream", "hellaswag_gen"))
    out = tmp_path / "out"
    # asked to stop at missing data: one line naming the task and dataset, before the model loads
    assert main(_eval_cmd(student_dir, partial_data_dir, suite, out, "--limit", "2", "--no-skip-missing-data")) == 2
    err = capsys.readouterr().err
    assert "task 'gsm8k_cot' (gsm8k_cot) needs the dataset openai/gsm8k/main" in err and not out.exists()
    # the default offline: skipped with one line, the tasks that have data run, the table says both
    assert main(_eval_cmd(student_dir, partial_data_dir, suite, out, "--limit", "2")) == 0
    captured = capsys.readouterr()
    skip_lines = [x for x in captured.err.splitlines() if "skipped, no local data" in x]
    assert skip_lines == ["tide eval: gsm8k_cot: skipped, no local data for openai/gsm8k/main (offline); put its splits "
                          "in DATA_DIR/openai/gsm8k/main/<split>.jsonl and pass --data-dir, or run with --online"]
    table = json.loads((out / "small_table.json").read_text())
    assert table["partial"] and table["skipped"] == {"gsm8k_cot": "openai/gsm8k/main"}
    rows = {r["task"]: r for r in table["rows"]}
    assert rows["gsm8k_cot"]["ours"] is None and table["average"]["ours"] is None
    assert (rows["mmlu_generative_dream"]["n"], rows["mmlu_generative_dream"]["n_total"]) == (2, 5)
    assert rows["mmlu_generative_dream"]["limited"] and not rows["hellaswag_gen"]["limited"]  # 1 row: all of it
    md = (out / "small_table.md").read_text()
    assert md in captured.out and md.startswith("**Partial table**: 1 of 3 tasks skipped")
    assert "| MMLU (n=2 of 5) |" in md and "| HellaSwag |" in md
    assert not (out / "gsm8k_cot.json").exists() and (out / "mmlu_generative_dream.json").is_file()


def test_lm_eval_notes_go_to_our_logger_below_warning(caplog):
    import logging

    from tide_plugin.eval.runtime import NOTES_LOGGER, lm_eval_notes

    task_logger = logging.getLogger("lm_eval.api.task")
    caplog.set_level(logging.DEBUG)
    with lm_eval_notes():
        task_logger.warning("tide_smoke: Custom kwargs can be passed to `--metadata` in console (as json string)")
        task_logger.warning("Label index was not in within range of available choices")
    ours = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert ours == [
        (NOTES_LOGGER, logging.DEBUG, "lm-eval: tide_smoke: Custom kwargs can be passed to `--metadata` in console "
                                      "(as json string)"),
        (NOTES_LOGGER, logging.WARNING, "lm-eval: Label index was not in within range of available choices"),
    ]
    caplog.clear()
    task_logger.warning("after the run")  # restored: lm-eval's own handling again
    assert [r.name for r in caplog.records] == ["lm_eval.api.task"]


@pytest.mark.slow
def test_tide_eval_prints_no_lm_eval_notes_or_cache_warnings(student_dir, tmp_path, capsys, caplog, recwarn):
    import logging

    from tide_plugin.cli import main
    from tide_plugin.eval.runtime import NOTES_LOGGER

    caplog.set_level(logging.DEBUG, logger=NOTES_LOGGER)
    assert main(["eval", "--model", str(student_dir), "--tasks", "tide_smoke", "--limit", "2", "--max-gen-toks", "8",
                 "--batch-size", "2", "--dtype", "float32", "--output-dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "Custom kwargs" not in captured.err and "past_key_values" not in captured.err
    assert not [w for w in recwarn if "past_key_values" in str(w.message)]
    assert any("Custom kwargs" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)
    assert "tide_smoke (n=2 of 6)" in captured.out  # a limited run is marked in lm-eval's table too


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_processes_give_the_one_process_scores(student_dir, data_dir, tmp_path):
    suite = _suite_file(tmp_path, only=("mmlu_generative_dream", "gsm8k_cot"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_OFFLINE": "1"}
    one = [sys.executable, "-m", "tide_plugin.cli", *_eval_cmd(student_dir, data_dir, suite, tmp_path / "one")]
    two = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "tide_plugin.cli",
           *_eval_cmd(student_dir, data_dir, suite, tmp_path / "two")]
    for cmd in (one, two):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("mmlu_generative_dream", "gsm8k_cot"):
        a, b = (json.loads((tmp_path / d / f"{name}.json").read_text())["tide"] for d in ("one", "two"))
        assert (a["score"], a["n"], a["processes"], b["processes"]) == (b["score"], b["n"], 1, 2), name
    a, b = ((tmp_path / d / "samples_mmlu_generative_dream.jsonl").read_text().splitlines() for d in ("one", "two"))
    key = lambda rows: sorted((json.loads(r)["doc_id"], json.loads(r)["resps"][0][0]) for r in rows)  # noqa: E731
    assert len(a) == 5 and key(a) == key(b)  # every document answered once, with the same answer


# ---------------------------------------------------------- one-line errors


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "tide_plugin.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("tide eval: error:")]
    return line


@pytest.mark.slow
def test_an_unknown_task_gets_did_you_mean_and_the_choices(student_dir):
    line = _one_line(_cli("eval", "--model", str(student_dir), "--tasks", "gsm8k_cott"))
    assert "unknown task 'gsm8k_cott'; did you mean 'gsm8k_cot'" in line and "mmlu_generative_dream" in line


def test_a_folder_that_is_no_checkpoint_says_so(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    line = _one_line(_cli("eval", "--model", str(tmp_path), "--tasks", "tide_smoke"))
    assert "is not a checkpoint: it has no config.json" in line and "sentencepiece" not in line


@pytest.mark.slow
def test_a_likelihood_task_names_the_generative_variants_before_any_download(student_dir):
    line = _one_line(_cli("eval", "--model", str(student_dir), "--tasks", "hellaswag"))
    assert "'hellaswag' (hellaswag) is a multiple_choice task" in line and "hellaswag_gen" in line


@pytest.mark.slow
def test_a_missing_dataset_names_the_task_and_the_dataset(student_dir, tmp_path):
    line = _one_line(_cli("eval", "--model", str(student_dir), "--tasks", "gsm8k_cot", "--data-dir", str(tmp_path),
                          "--no-skip-missing-data"))
    assert "task 'gsm8k_cot' (gsm8k_cot) needs the dataset openai/gsm8k/main" in line
    # skipped by default offline: with nothing left to run, one line naming what was skipped
    line = _one_line(_cli("eval", "--model", str(student_dir), "--tasks", "gsm8k_cot", "--data-dir", str(tmp_path)))
    assert "no task has local data (skipped: gsm8k_cot (openai/gsm8k/main))" in line


def test_think_blocks_are_stripped_from_answers():
    from tide_plugin.eval.runtime import strip_think

    assert strip_think("<think>\nx\n</think>\n\nThe answer is 7.") == "The answer is 7."
    assert strip_think("\n</think>\n\nB") == "B"  # the opening tag was in the prompt
    assert strip_think("C. Mars <think> unfinished") == "C. Mars "
    assert strip_think("no think here") == "no think here"
