"""Every option of the reference (its trainer config ``DistillBD3LMConfig``, the argument
dataclasses of its two entry points, the flags its launch scripts pass) is accepted by
``tide distill`` and means what it means there: mapped, or refused / noted in one line."""

from __future__ import annotations

import argparse
import warnings

import pytest

from tide_plugin.cli.distill import add_arguments, resolve_options
from tide_plugin.cli.reference_args import CliDistillConfig as DistillConfig  # what tide distill builds

# Names as the reference spells them (its trainer config and the model / teacher / data /
# training argument dataclasses of examples/a2d/bd3lm/distill.py and distill_wedlm.py,
# dllm's ModelArguments / DataArguments / TrainingArguments / MDLMConfig / BD3LMConfig
# included), plus what the launch scripts pass.
REFERENCE_OPTIONS = [
    # trainer config
    "distill_mode", "concat_order", "alm_weight", "alm_temperature", "kl_weight", "kl_temperature",
    "shared_vocab_size", "teacher_mask_token_id", "taid_lambda_init", "taid_lambda_max", "taid_lambda_decay",
    "taid_timestep_weight", "taid_weight", "taid_axis_mode", "use_complementary_demo", "demo_ratio",
    "block_size", "time_epsilon", "loss_weight_type", "loss_norm_type", "right_shift_logits",
    # model arguments
    "model_name_or_path", "dtype", "load_in_4bit", "attn_implementation", "lora", "target_modules", "r",
    "lora_alpha", "lora_dropout", "bias", "modules_to_save",
    # teacher arguments
    "teacher_model_name_or_path", "teacher_dtype", "teacher_load_in_4bit", "teacher_byteify_spec",
    "student_byteify_spec", "teacher_attn_implementation",
    # data arguments
    "dataset_args", "num_proc", "disable_caching", "max_length", "truncation", "load_preprocessed_data",
    "mask_prompt_loss", "pad_to_max_length", "max_teacher_length", "teacher_max_length",
    # the block-teacher collator's ids (pipeline B)
    "teacher_eos_token_id", "teacher_pad_token_id",
    # training arguments the entry points set or the scripts pass
    "output_dir", "report_to", "overwrite_output_dir", "seed", "num_train_epochs", "learning_rate",
    "lr_scheduler_type", "per_device_train_batch_size", "per_device_eval_batch_size",
    "gradient_accumulation_steps", "warmup_ratio", "bf16", "logging_steps", "eval_on_start", "eval_strategy",
    "eval_steps", "save_steps", "save_only_model", "remove_unused_columns", "group_by_length",
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser


def _parse(argv):
    return resolve_options(_parser().parse_args(argv))


def test_every_reference_option_is_a_flag():
    flags = {o for a in _parser()._actions for o in a.option_strings}
    missing = [name for name in REFERENCE_OPTIONS if f"--{name}" not in flags]
    assert not missing, missing


def test_reference_weights_decays_and_names_are_mapped(tmp_path):
    options, run = _parse([
        "--preset", "none", "--output_dir", str(tmp_path), "--distill_mode", "alm_taid", "--alm_weight", "0.5",
        "--taid_lambda_decay", "linear", "--use_complementary_demo", "True", "--max_teacher_length", "256",
        "--pad_to_max_length", "--group_by_length", "True", "--teacher_attn_implementation", "eager",
        "--teacher_eos_token_id", "7", "--teacher_pad_token_id", "9", "--teacher_byteify_spec", "x:source=y",
        "--dataset_args", "chats.jsonl", "--load_preprocessed_data", "False", "--mask_prompt_loss", "False",
    ])
    assert run["data"] == "chats.jsonl" and run["load_preprocessed_data"] is False and run["mask_prompt_loss"] is False
    cfg = DistillConfig(**options, use_cpu=True)
    assert cfg.objective_kwargs() == {"weight": 0.5, "decay": "linear"}
    assert cfg.use_comp_demo and "comp_demo" in cfg.collator_names() and cfg.teacher_max_length == 256
    assert cfg.pad_to_max_length is True and cfg.group_by_length is True
    assert getattr(cfg, "train_sampling_strategy", "group_by_length") == "group_by_length"
    notes = cfg.reference_notes()
    assert any(n.startswith("pad_to_max_length has no effect") for n in notes)
    assert any(n.startswith("teacher_byteify_spec has no effect") for n in notes)
    # kl_weight weighs KL, taid_weight token TIDAL; alm_weight only chunk objectives
    cfg = DistillConfig(output_dir=str(tmp_path), use_cpu=True, distill_mode="kl_aligned+taid_aligned",
                        kl_weight=0.25, taid_weight=2.0, alm_weight=9.0)
    kw = cfg.objective_kwargs()
    assert kw["kl_aligned"]["weight"] == 0.25 and kw["taid_aligned"]["weight"] == 2.0


def test_teacher_ids_and_attention_reach_the_collator_and_adapter(tmp_path):
    from helpers.distill import EOS, MASK, V, synthetic_rows

    from tide_plugin.tiny import tiny_qwen3, tiny_qwen3_moe
    from tide_plugin.training import build_trainer

    cfg = DistillConfig(output_dir=str(tmp_path), objective="kl", pipeline="same", shared_vocab_size=V,
                        block_size=4, use_cpu=True, report_to="none", teacher_pad_token_id=5,
                        teacher_attn_implementation="eager")
    trainer = build_trainer(cfg, student=tiny_qwen3(V), teacher_model=tiny_qwen3_moe(V, seed=1),
                            train_dataset=synthetic_rows(4), student_mask_id=MASK, student_eos_id=EOS)
    pad = trainer.data_collator.chain.stages[0]
    assert type(pad).__name__ == "DistillPad" and pad.config.teacher_pad_id == 5
    assert trainer.teacher.config.attn_implementation == "eager"


def test_reverse_alm_taid_runs_with_the_spec_warning(tmp_path):
    import tide_plugin

    with pytest.warns(UserWarning, match="TIDAL pairs with forward objectives only"):
        obj = tide_plugin.get_objective("reverse_alm_taid")
    assert obj.name == "tidal_calm" and obj.config.reverse and obj.direction == "reverse"
    assert DistillConfig(output_dir=str(tmp_path), use_cpu=True, distill_mode="reverse_alm_taid").pipeline == "cross"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lora", "True"], "lora=True is not supported"),
        (["--load_in_4bit", "True"], "load_in_4bit=True is not supported for the student"),
        (["--use_complementary_demo", "False", "--use_comp_demo", "True"], "disagree"),
        (["--taid_decay", "cosine", "--taid_lambda_decay", "linear"], "disagree"),
        (["--alm_weight", "-1"], "alm_weight -1.0 must be >= 0"),
        (["--dtype", "float8"], "dtype 'float8' is not one of"),
    ],
)
def test_reference_values_we_cannot_honour_are_refused(flags, message, tmp_path):
    options, _ = _parse(["--preset", "none", "--output_dir", str(tmp_path), *flags])
    with pytest.raises(ValueError, match=message):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            DistillConfig(**options, use_cpu=True)


def test_tokenizers_come_from_the_model_folders(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "t").mkdir()
    _, run = _parse(["--model_name_or_path", str(tmp_path / "s"), "--teacher_model_name_or_path", str(tmp_path / "t")])
    assert run["preset"] == "none" and "student_tokenizer" not in run and "teacher_tokenizer" not in run
    # a preset asked for keeps the folders' tokenizers too, unless a tokenizer flag is given
    _, run = _parse(["--preset", "demo", "--model_name_or_path", str(tmp_path / "s"),
                     "--teacher_tokenizer", "offline:qwen"])
    assert "student_tokenizer" not in run and run["teacher_tokenizer"] == "offline:qwen"


def test_explicit_save_steps_beats_the_preset_and_concat_order_picks_the_block_teacher(tmp_path):
    options, _ = _parse(["--save_steps", "10"])
    assert options["save_strategy"] == "steps" and options["save_steps"] == 10
    options, _ = _parse(["--save_steps", "10", "--save_strategy", "no"])
    assert options["save_strategy"] == "no"
    options, _ = _parse(["--preset", "none", "--concat_order", "x0_xt", "--distill_mode", "taid_aligned"])
    assert options["teacher"] == "block"
