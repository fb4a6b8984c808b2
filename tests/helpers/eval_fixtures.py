"""Tiny local copies of the paper suite's datasets, each row in its hub dataset's
own schema, written as DATA_DIR/<dataset_path>/<dataset_name or default>/<split>.jsonl
(the layout ``tide eval --data-dir`` reads). Every row has a known answer so tests
can plant right and wrong replies."""

from __future__ import annotations

import json
from pathlib import Path

MMLU = {"question": "Which planet is known as the Red Planet?", "subject": "astronomy",
        "choices": ["Venus", "Jupiter", "Mars", "Saturn"], "answer": 2}
MMLU_DEV = {"question": "What is 2 + 2?", "subject": "elementary_mathematics",
            "choices": ["3", "4", "5", "6"], "answer": 1}
MMLU_PRO_CATEGORIES = ("biology", "business", "chemistry", "computer science", "economics", "engineering", "health",
                       "history", "law", "math", "other", "philosophy", "physics", "psychology")
HELLASWAG = {"ind": 24, "activity_label": "Roof shingle removal",
             "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
             "ctx": "A man is sitting on a roof. he",
             "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                         "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
             "source_id": "activitynet~v_-JhWjGDPHMY", "split": "val", "split_type": "indomain", "label": "3"}
GSM8K = {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
         "answer": "Tom has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"}
BBH = {"input": "not ( True ) and ( True ) is", "target": "False"}
MATH = {"problem": "What is $1+1$?", "level": "Level 1", "type": "Algebra",
        "solution": "We have $1+1=\\boxed{2}$."}
MBPP = {"task_id": 11, "text": "Write a python function to add two numbers.",
        "code": "def add(a, b):\r\n  return a + b",
        "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0"],
        "test_setup_code": "", "challenge_test_list": []}
MBPP_PROMPT = {"task_id": 2, "text": "Write a function to return the first element of a list.",
               "code": "def first(xs):\r\n  return xs[0]",
               "test_list": ["assert first([1]) == 1", "assert first([2, 3]) == 2", "assert first('ab') == 'a'"],
               "test_setup_code": "", "challenge_test_list": []}


def mmlu_pro_row(category: str, i: int) -> dict:
    options = ["10", "20", "30", "40", "50", "60", "70", "80", "90", "100"]
    return {"question_id": i, "question": f"({category}) What is 6 times 5?", "options": options,
            "answer": "C", "answer_index": 2,
            "cot_content": "A: Let's think step by step. 6 times 5 is 30. The answer is (C).",
            "category": category, "src": "fixture"}


def _write(root: Path, dataset: str, name: str | None, split: str, rows: list[dict]) -> None:
    folder = root / dataset / (name or "default")
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def write_paper_fixtures(root: Path, bbh_names: list[str], math_names: list[str]) -> Path:
    """Every dataset the paper suite reads, one scored row each (and shots where a split gives them)."""
    _write(root, "cais/mmlu", "all", "test", [MMLU])
    _write(root, "cais/mmlu", "all", "dev", [MMLU_DEV])
    pro = [mmlu_pro_row(c, i) for i, c in enumerate(MMLU_PRO_CATEGORIES)]
    _write(root, "TIGER-Lab/MMLU-Pro", None, "test", pro)
    _write(root, "TIGER-Lab/MMLU-Pro", None, "validation", pro)
    _write(root, "Rowan/hellaswag", None, "validation", [HELLASWAG])
    _write(root, "openai/gsm8k", "main", "test", [GSM8K])
    for name in bbh_names:
        _write(root, "SaylorTwift/bbh", name, "test", [BBH])
    for name in math_names:
        _write(root, "EleutherAI/hendrycks_math", name, "test", [MATH])
    _write(root, "google-research-datasets/mbpp", "full", "test", [MBPP])
    _write(root, "google-research-datasets/mbpp", "full", "prompt", [MBPP_PROMPT])
    return root
