"""Evaluation: sandboxed HumanEval execution, pass@k, the lm-eval model
``tide_bd3lm`` and ``tide eval`` end to end on a tiny student (offline)."""

from __future__ import annotations

import glob
import json
import math
import time

import pytest
import torch

from tide_plugin.eval import humaneval
from tide_plugin.eval.humaneval import pass_at_k, run_program

# ------------------------------------------------------------------ pass@k


def test_pass_at_k_matches_the_combinatorial_formula():
    for n in range(1, 21):
        for c in range(0, n + 1):
            for k in range(1, n + 1):
                expected = 1.0 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)
    assert pass_at_k(200, 37, 1) == pytest.approx(37 / 200)
    assert pass_at_k(200, 0, 100) == 0.0 and pass_at_k(200, 150, 100) == 1.0


@pytest.mark.parametrize("n,c,k", [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match=f"n={n}, c={c}, k={k}"):
        pass_at_k(n, c, k)


# ------------------------------------------------------------- execution


def test_a_correct_program_passes_and_a_wrong_one_fails():
    assert run_program("assert 1 + 1 == 2\n").status == "passed"
    bad = run_program("assert 1 + 1 == 3, 'arith'\n")
    assert bad.status == "failed" and "AssertionError" in bad.output and bad.returncode != 0
    assert run_program("def f(:\n").status == "failed"


def test_programs_run_isolated_in_a_temporary_directory():
    r = run_program("import os, sys\nprint(os.getcwd()); print(sys.flags.isolated); print(os.environ.get('VIRTUAL_ENV'))\n")
    cwd, isolated, venv = r.output.split()
    assert r.passed and "tide-exec-" in cwd and isolated == "1" and venv == "None"


def test_an_endless_loop_is_killed_and_fails():
    start = time.monotonic()
    r = run_program("while True:\n    pass\n", timeout_s=1.0)
    assert r.status in ("timeout", "failed") and not r.passed
    assert time.monotonic() - start < 10


def test_a_sleeping_program_is_killed_at_the_wall_clock_limit():
    start = time.monotonic()
    r = run_program("import time\ntime.sleep(60)\n", timeout_s=1.0)
    assert r.status == "timeout" and time.monotonic() - start < 10


def test_unbounded_allocation_hits_the_memory_limit_and_fails():
    start = time.monotonic()
    r = run_program("x = []\nwhile True:\n    x.append(bytearray(10**7))\n", timeout_s=20.0, memory_mb=256)
    assert r.status == "failed" and "MemoryError" in r.output
    assert time.monotonic() - start < 15


def test_the_shipped_problems_are_read_locally():
    problems = humaneval.load_problems()
    assert len(problems) == 164
    assert problems[0]["task_id"] == "HumanEval/0"
    assert {"prompt", "test", "entry_point", "canonical_solution"} <= set(problems[0])


def test_canonical_solutions_pass_and_bad_completions_fail():
    problems = humaneval.load_problems()
    for p in (problems[0], problems[53], problems[163]):
        good = humaneval.check_completions(p, [p["canonical_solution"]])
        assert [r.status for r in good] == ["passed"]
        bad = humaneval.check_completions(p, ["    return None\n", "    while True:\n        pass\n"], timeout_s=1.0)
        assert not any(r.passed for r in bad)


def test_task_scoring_counts_every_sample():
    from tide_plugin.eval.cli import TASKS_DIR
    import importlib.util

    spec = importlib.util.spec_from_file_location("tide_tasks", TASKS_DIR / "tide_tasks.py")
    tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tasks)
    p = humaneval.load_problems()[2]
    samples = [p["canonical_solution"], "    return -1\n", p["canonical_solution"], "    raise SystemExit(3)\n"]
    assert tasks.humaneval_process_results(p, [samples]) == {"pass@1": 0.5}
    assert tasks.humaneval_process_results(p, [p["canonical_solution"]]) == {"pass@1": 1.0}
    fenced = tasks.humaneval_instruct_completions([[p["canonical_solution"] + "```\nprint('x')"]], [p])
    assert fenced == [[p["canonical_solution"]]]
    assert len(tasks.smoke_dataset()["test"]) == 6


# ----------------------------------------------------------- lm-eval model


@pytest.fixture(scope="module")
def lm(student_dir):
    from tide_plugin.eval.lm_eval_model import TideBD3LM

    return TideBD3LM(pretrained=str(student_dir), batch_size=2, dtype="float32", steps_per_block=8)


def _request(context: str, **gen_kwargs):
    from lm_eval.api.instance import Instance

    return Instance(request_type="generate_until", doc={}, arguments=(context, gen_kwargs), idx=0)


def test_the_model_is_registered_under_its_name():
    from lm_eval.api.registry import get_model

    from tide_plugin.eval.lm_eval_model import TideBD3LM

    assert get_model("tide_bd3lm") is TideBD3LM


def test_checkpoint_settings_are_read(student_dir, tmp_path):
    """Without tide_config.json: the block size from the model config (not the default
    32) and the mask id from the tokenizer, which wins over the config's."""
    import shutil

    from transformers import AutoConfig

    from tide_plugin.eval.lm_eval_model import TideBD3LM
    from tide_plugin.offline import QWEN_MASK_ID

    path = tmp_path / "student"
    shutil.copytree(student_dir, path)
    config = AutoConfig.from_pretrained(path)
    config.block_size, config.mask_token_id = 8, 151643
    config.save_pretrained(path)
    lm = TideBD3LM(pretrained=str(path), batch_size=2, dtype="float32")
    assert lm.block_size == 8
    assert lm.mask_id == QWEN_MASK_ID != 151643


def test_tide_config_written_by_the_trainer_wins(student_dir, tmp_path):
    import shutil

    from tide_plugin.eval.lm_eval_model import TideBD3LM

    path = tmp_path / "student"
    shutil.copytree(student_dir, path)
    (path / "tide_config.json").write_text(json.dumps({"mask_token_id": 151669, "block_size": 16}))
    lm = TideBD3LM(pretrained=str(path))
    assert (lm.mask_id, lm.block_size) == (151669, 16)


def test_likelihood_requests_name_the_generative_variants(lm):
    for call in (lm.loglikelihood, lm.loglikelihood_rolling):
        with pytest.raises(NotImplementedError, match="mmlu_generative.*gsm8k_cot"):
            call([])


def test_generate_until_is_the_sampler_output_cut_at_the_stop_string(lm):
    from tide_plugin.eval.sampler import generate

    context = "def add(a, b):\n"
    ids = lm.tokenizer(context, add_special_tokens=False)["input_ids"]
    direct = generate(lm.model, [ids], mask_id=lm.mask_id, block_size=32, max_new_tokens=32, steps_per_block=8,
                      tokenizer=lm.tokenizer, generator=torch.Generator().manual_seed(0))[0]
    text = lm.tokenizer.decode(direct, skip_special_tokens=True)
    assert len(text) > 4
    [plain] = lm.generate_until([_request(context, until=[], max_gen_toks=32)], disable_tqdm=True)
    assert plain == text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    [cut] = lm.generate_until([_request(context, until=[stop], max_gen_toks=32)], disable_tqdm=True)
    assert cut == text.split(stop)[0] and len(cut) < len(text)


def test_batched_requests_keep_their_order(lm):
    reqs = [_request(c, until=["\n\n"], max_gen_toks=32) for c in ("a", "a much longer context here", "b c")]
    together = lm.generate_until(reqs, disable_tqdm=True)
    alone = [lm.generate_until([r], disable_tqdm=True)[0] for r in reqs]
    assert together == alone


def test_bad_model_arguments_are_named(student_dir, tmp_path):
    from tide_plugin.eval.lm_eval_model import TideBD3LM

    with pytest.raises(FileNotFoundError, match="not a local checkpoint directory"):
        TideBD3LM(pretrained=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="remasking 'best' is not one of"):
        TideBD3LM(pretrained=str(student_dir), remasking="best")


@pytest.mark.slow
def test_tide_eval_end_to_end_on_the_offline_tasks(student_dir, tmp_path, capsys):
    from tide_plugin.cli import main

    out = tmp_path / "eval"
    rc = main([
        "eval", "--model", str(student_dir), "--tasks", "tide_smoke,humaneval_offline", "--limit", "2",
        "--gen-kwargs", "max_gen_toks=32", "--output-dir", str(out), "--log-samples", "--batch-size", "2",
    ])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "humaneval_offline" in printed and "pass@1" in printed and "exact_match" in printed
    [path] = glob.glob(str(out / "results_*.json"))
    results = json.loads(open(path).read())["results"]
    assert results["humaneval_offline"]["sample_len"] == 2
    assert 0.0 <= results["humaneval_offline"]["pass@1,create_test"] <= 1.0
    assert 0.0 <= results["tide_smoke"]["exact_match,strip"] <= 1.0
    samples = [json.loads(line) for line in open(glob.glob(str(out / "samples_humaneval_offline_*.jsonl"))[0])]
    assert len(samples) == 2 and all(s["doc"]["task_id"].startswith("HumanEval/") for s in samples)
    assert all(isinstance(s["resps"][0][0], str) for s in samples)


def test_tide_eval_refuses_what_it_cannot_do(tmp_path, capsys):
    from tide_plugin.cli import main

    assert main(["eval", "--model", str(tmp_path / "none"), "--tasks", "tide_smoke"]) == 2
    assert "is not a local checkpoint directory" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path), "--tasks", "tide_smoke", "--cfg-scale", "1.5"]) == 2
    assert "cfg-scale 1.5 is not supported" in capsys.readouterr().err
