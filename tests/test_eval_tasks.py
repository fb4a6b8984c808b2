"""The paper suite's eight tasks, each through its real definition on a tiny local
fixture in its dataset's own schema: prompt, shots, stop rule, answer extraction and
metric (planted right and wrong replies). No hub: the data come from tests/helpers/eval_fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.eval_fixtures import write_paper_fixtures

THINK = "<think>\n\n</think>\n\n"

# suite row -> (strings the prompt holds, how often the shot marker occurs, stop strings,
#               a right reply, a wrong reply, the reported metric)
CASES = {
    "mmlu_generative_dream": (
        ["about astronomy.", "Which planet is known as the Red Planet?\nA. Venus\nB. Jupiter\nC. Mars\nD. Saturn\nAnswer:"],
        ("Answer:", 1), [], " C. Mars", " A", "exact_match",
    ),
    "hellaswag_gen": (
        ["Roof shingle removal: A man is sitting on a roof. He\nA. is using wrap", "D. starts pulling up roofing on a roof.\nAnswer:"],
        ("Answer:", 1), [], "D", "B.", "exact_match",
    ),
    "gsm8k_cot": (
        ["Q: Tom has 3 apples and buys 4 more. How many apples does he have?\nA:"],
        ("Q:", 1), ["Q:", "</s>", "<|im_end|>"], "3 + 4 = 7. The answer is 7.", "The answer is 8.", "exact_match",
    ),
    "mmlu_pro": (
        ["Question:\n(biology) What is 6 times 5?\nOptions:\nA. 10\n", "J. 100\nAnswer: Let's think step by step."],
        ("Question:", 1), ["Question:"], "6 times 5 is 30. The answer is (C).", "The answer is (A).", "exact_match",
    ),
    "bbh": (  # 3 shots, the last question is ours
        ["Evaluate the result of a random Boolean expression.", "Q: not ( True ) and ( True ) is\nA: Let's think step by step."],
        ("Q: ", 4), ["</s>", "Q", "\n\n"], "not True is False, so the answer is False.", "So the answer is True.",
        "exact_match",
    ),
    "minerva_math": (
        ["Problem:\nWhat is $1+1$?\n\nSolution:"],
        ("Problem:", 1), ["Problem:"], "1+1=2.\nFinal Answer: The final answer is $2$. I hope it is correct.",
        "Final Answer: The final answer is $3$. I hope it is correct.", "exact_match",
    ),
    "humaneval_instruct": (
        ["Write a solution to the following problem and make sure that it passes the tests:\n```python\nfrom typing"],
        ("```python", 2), ["\nclass", "\ndef", "\n#", "\nif", "\nprint"], None, "    return None\n```", "pass@1",
    ),
    "mbpp_instruct": (
        ["You are an expert Python programmer, and here is your task:\nWrite a python function to add two numbers.",
         "assert add(-1, 1) == 0"],
        ("here is your task", 1), [], "def add(a, b):\n    return a + b\n```", "def add(a, b):\n    return a - b\n```",
        "pass@1",
    ),
}


@pytest.fixture(scope="module")
def catalog():
    from tide_plugin.eval.taskdefs import TaskCatalog

    return TaskCatalog()


@pytest.fixture(scope="module")
def data_dir(catalog, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-data")
    names = lambda group: [catalog.config(leaf)["dataset_name"] for leaf in catalog.leaves(group)]  # noqa: E731
    return write_paper_fixtures(root, names("bbh"), names("minerva_math"))


@pytest.fixture(scope="module")
def chat_lm(tmp_path_factory):
    """The tide_bd3lm model of a tiny student: its chat template (with the think block) renders the prompts."""
    from tide_plugin.eval.lm_eval_model import TideBD3LM
    from tide_plugin.offline import tokenizer
    from tide_plugin.tiny import tiny_qwen3

    tok = tokenizer("qwen")
    path = tmp_path_factory.mktemp("student")
    tiny_qwen3(len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return TideBD3LM(pretrained=str(path), dtype="float32", think_injection=True)


def _score(task, inst, reply: str, key: str) -> float:
    """The reply through the task's filter and metric named by ``key`` ("metric,filter")."""
    metric, filter_name = key.split(",")
    inst.resps[:] = [reply]
    task.apply_filters()
    return float(task.process_results(inst.doc, [inst.filtered_resps[filter_name]])[metric])


@pytest.mark.parametrize("name", list(CASES))
def test_each_paper_task_runs_its_real_definition_on_the_fixture(name, catalog, data_dir, chat_lm):
    from tide_plugin.eval.suite import load_suite

    row = next(t for t in load_suite("paper").tasks if t.name == name)
    must_hold, (marker, count), until, right, wrong, metric = CASES[name]
    task = catalog.build(row.task, data_dir)[0]
    task.set_config(key="num_fewshot", value=row.num_fewshot)
    task.build_all_requests(limit=1, apply_chat_template=True, chat_template=chat_lm.apply_chat_template,
                            fewshot_as_multiturn=False)
    inst = task.instances[0]
    prompt, gen_kwargs = inst.args
    for text in must_hold:
        assert text in prompt, (name, text, prompt[-600:])
    assert prompt.count(marker) == count, (name, prompt)
    # the think block follows the generation prompt, before any answer prefix
    assert "<|im_start|>assistant\n" + THINK in prompt
    assert prompt.endswith(THINK) or name in ("humaneval_instruct", "mbpp_instruct")
    assert list(gen_kwargs.get("until", [])) == until
    if right is None:  # HumanEval: the canonical solution is the right reply
        right = inst.doc["canonical_solution"] + "```"
    assert row.metric.split(",")[0] == metric
    assert _score(task, inst, right, row.metric) == 1.0
    assert _score(task, inst, wrong, row.metric) == 0.0


def test_the_generative_groups_cover_every_subtask(catalog, data_dir):
    assert len(catalog.build("bbh", data_dir)) == 27
    assert len(catalog.build("mmlu_pro", data_dir)) == 14
    assert len(catalog.build("minerva_math", data_dir)) == 7


def test_a_local_dataset_folder_without_the_scored_split_is_named(catalog, tmp_path):
    (tmp_path / "openai" / "gsm8k" / "main").mkdir(parents=True)
    (tmp_path / "openai" / "gsm8k" / "main" / "train.jsonl").write_text("{}\n")
    with pytest.raises(FileNotFoundError, match=r"gsm8k_cot.*has no test.jsonl.*found: train.jsonl"):
        catalog.build("gsm8k_cot", tmp_path)


def test_letter_extraction_takes_the_first_standalone_letter(catalog, data_dir, chat_lm):
    task = catalog.build("hellaswag_gen", data_dir)[0]
    task.build_all_requests(limit=1)
    inst = task.instances[0]
    assert _score(task, inst, "D) starts", "exact_match,get_letter") == 1.0
    assert _score(task, inst, "Dog", "exact_match,get_letter") == 0.0  # no standalone letter: invalid
    assert _score(task, inst, "B or D", "exact_match,get_letter") == 0.0  # the first one counts
