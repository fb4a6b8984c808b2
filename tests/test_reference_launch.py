"""The reference's two launch lines (``scripts/distill_llada2.sh`` for pipeline A,
``scripts/distill_wedlm.sh`` for pipeline B) run through ``tide distill`` unchanged,
flags as the scripts write them with the scripts' default values, on local tiny
checkpoint folders in place of hub ids: an A2D student (dllm's layout), a MoE
bidirectional teacher for A, a dense block teacher for B, and a ``tide preprocess``
folder as ``--dataset_args``. Two steps each (``--max_steps 2``, passed the way the
scripts pass extra arguments); the student comes back as A2D.

Adjusted where a CPU forces it, nothing else: ``--attn_implementation flex_attention``
-> ``sdpa`` (flex attention with a tensor mask fails on CPU) and ``--report_to wandb``
-> ``none`` (wandb is not installed; the scripts disable it anyway with
``WANDB_MODE=disabled``); without a GPU, ``--use_cpu True`` is added (transformers
refuses ``--bf16 True`` without it). ``--bf16 True`` is kept.
"""

from __future__ import annotations

import copy
import json

import pytest
from helpers.a2d import write_a2d_folder

from tide_plugin import cli
from tide_plugin.cli.distill import ALT_TEMPLATE
from tide_plugin.offline import tokenizer

CPU_ADJUSTED = {"--attn_implementation": "sdpa", "--report_to": "none"}


def _cpu(argv: list[str]) -> list[str]:
    import torch

    out = list(argv)
    for i, flag in enumerate(out[:-1]):
        if flag in CPU_ADJUSTED:
            out[i + 1] = CPU_ADJUSTED[flag]
    if not torch.cuda.is_available():
        out += ["--use_cpu", "True"]
    return out


def _chat_rows(path, n=2):
    rows = [
        {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                      {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _student_folder(root):
    qwen = tokenizer("qwen")
    write_a2d_folder(root / "student", vocab_size=len(qwen), bos_token_id=None,
                     eos_token_id=qwen.eos_token_id, pad_token_id=qwen.pad_token_id)
    qwen.save_pretrained(root / "student")
    return root / "student"


def _teacher_folder(root, kind: str):
    from tide_plugin.tiny import tiny_qwen3, tiny_qwen3_moe

    if kind == "moe":  # LLaDA2.0-mini's shape in miniature, with another tokenizer
        tok = tokenizer("mistral")
        model = tiny_qwen3_moe(len(tok), seed=1, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    else:  # WeDLM's in miniature: the student's vocabulary, another chat template
        tok = copy.deepcopy(tokenizer("qwen"))
        tok.chat_template = ALT_TEMPLATE
        model = tiny_qwen3(len(tok), seed=1, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(root / f"teacher-{kind}")
    tok.save_pretrained(root / f"teacher-{kind}")
    return root / f"teacher-{kind}"


def _preprocess(root, student, teacher, pipeline):
    out = root / f"data-{pipeline}"
    argv = ["preprocess", "--input", str(_chat_rows(root / "chats.jsonl")), "--output", str(out),
            "--pipeline", pipeline, "--student", str(student), "--teacher", str(teacher),
            "--max-length", "64", "--no-progress"]
    assert cli.main(argv) == 0
    return out


def _check_student_is_a2d(out):
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "a2d-qwen3" and config["architectures"] == ["A2DQwen3LMHeadModel"]
    assert (out / "tokenizer_config.json").exists() and (out / "tide_config.json").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    loss = metrics["train"]["train_loss"]
    assert loss == loss and loss > 0  # finite, trained
    return metrics


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:reverse chunk TIDAL")
def test_pipeline_a_launch_line(tmp_path, capsys):
    student, teacher = _student_folder(tmp_path), _teacher_folder(tmp_path, "moe")
    data = _preprocess(tmp_path, student, teacher, "cross")
    out = tmp_path / "output" / "distill_llada2"
    # scripts/distill_llada2.sh with its defaults (DISTILL_MODE=reverse_alm_taid, USE_COMP_DEMO=True
    # chosen to exercise the TAID and CompDemo flags), then EXTRA_ARGS "--max_steps 2"
    argv = [
        "distill",
        "--model_name_or_path", str(student),
        "--teacher_model_name_or_path", str(teacher),
        "--teacher_load_in_4bit", "False",
        "--dataset_args", str(data),
        "--load_preprocessed_data", "True",
        "--output_dir", str(out),
        "--max_length", "512",
        "--max_teacher_length", "1024",
        "--num_train_epochs", "2",
        "--learning_rate", "5e-5",
        "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "8",
        "--gradient_accumulation_steps", "1",
        "--block_size", "32",
        "--distill_mode", "reverse_alm_taid",
        "--alm_weight", "1.0",
        "--alm_temperature", "5.0",
        "--taid_lambda_init", "0.1", "--taid_lambda_max", "0.9", "--taid_lambda_decay", "cosine",
        "--use_complementary_demo", "True",
        "--demo_ratio", "0.5",
        "--attn_implementation", "flex_attention",
        "--pad_to_max_length",
        "--group_by_length", "False",
        "--logging_steps", "10",
        "--save_steps", "10000",
        "--bf16", "True",
        "--report_to", "wandb",
        "--max_steps", "2",
    ]
    assert cli.main(_cpu(argv)) == 0
    printed = capsys.readouterr().out
    assert "objective 'tidal_calm', pipeline 'cross', teacher 'bidirectional'" in printed
    assert "note: pad_to_max_length has no effect" in printed
    metrics = _check_student_is_a2d(out)
    assert metrics["objective_as_given"] == "reverse_alm_taid" and metrics["train"]["step"] == 2


@pytest.mark.slow
def test_pipeline_b_launch_line(tmp_path, capsys):
    student, teacher = _student_folder(tmp_path), _teacher_folder(tmp_path, "block")
    data = _preprocess(tmp_path, student, teacher, "shared")
    out = tmp_path / "output" / "distill_wedlm"
    # scripts/distill_wedlm.sh with its defaults (DISTILL_MODE=taid_aligned: the TAID flags are passed),
    # then EXTRA_ARGS "--max_steps 2"
    argv = [
        "distill",
        "--model_name_or_path", str(student),
        "--teacher_model_name_or_path", str(teacher),
        "--teacher_load_in_4bit", "False",
        "--teacher_attn_implementation", "sdpa",
        "--dataset_args", str(data),
        "--load_preprocessed_data", "True",
        "--output_dir", str(out),
        "--max_length", "512",
        "--teacher_max_length", "768",
        "--num_train_epochs", "3",
        "--learning_rate", "5e-5",
        "--per_device_train_batch_size", "10",
        "--per_device_eval_batch_size", "10",
        "--gradient_accumulation_steps", "1",
        "--block_size", "32",
        "--distill_mode", "taid_aligned",
        "--concat_order", "x0_xt",
        "--kl_temperature", "2.0",
        "--teacher_mask_token_id", "151665",
        "--shared_vocab_size", "151646",
        "--taid_weight", "1.0", "--taid_lambda_init", "0.1", "--taid_lambda_max", "0.9",
        "--taid_lambda_decay", "cosine", "--taid_timestep_weight", "midrange", "--taid_axis_mode", "both",
        "--use_complementary_demo", "False",
        "--demo_ratio", "0.5",
        "--attn_implementation", "flex_attention",
        "--pad_to_max_length",
        "--group_by_length", "False",
        "--logging_steps", "10",
        "--save_steps", "10000",
        "--bf16", "True",
        "--report_to", "wandb",
        "--max_steps", "2",
    ]
    assert cli.main(_cpu(argv)) == 0
    printed = capsys.readouterr().out
    assert "objective 'tidal', pipeline 'shared', teacher 'block'" in printed
    metrics = _check_student_is_a2d(out)
    assert metrics["objective_as_given"] == "taid_aligned" and metrics["train"]["step"] == 2
