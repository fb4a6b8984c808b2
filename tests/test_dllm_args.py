"""Our argument classes parse beside dllm's in one HfArgumentParser: no field of ours
repeats one of dllm's ModelArguments / DataArguments, and the BD3LMConfig fields we
share mean what dllm's mean. Where dllm imports, the real classes are parsed together."""

from __future__ import annotations

import dataclasses

import pytest
import transformers

from tide_plugin.integrations.dllm_args import (
    DLLM_BD3LM_FIELDS,
    DLLM_DATA_FIELDS,
    DLLM_MODEL_FIELDS,
    argument_collisions,
    field_names,
)
from tide_plugin.training import DistillArguments, DistillConfig, dllm_available


def test_distill_arguments_repeat_no_dllm_model_or_data_field():
    ours = field_names(DistillArguments)
    assert not ours & (DLLM_MODEL_FIELDS | DLLM_DATA_FIELDS), ours & (DLLM_MODEL_FIELDS | DLLM_DATA_FIELDS)
    assert DLLM_BD3LM_FIELDS <= ours  # one field each, dllm's meaning
    assert not argument_collisions([DistillArguments, transformers.TrainingArguments])


def test_distill_arguments_parse_beside_training_arguments():
    parser = transformers.HfArgumentParser((transformers.TrainingArguments, DistillArguments))
    training, distill = parser.parse_args_into_dataclasses(
        ["--output_dir", "out", "--objective", "calm", "--block_size", "16", "--use_cpu", "True"]
    )
    assert distill.objective == "calm" and distill.block_size == 16 and training.output_dir == "out"


def test_argument_collisions_names_each_shared_field():
    @dataclasses.dataclass
    class Data:
        max_length: int = 8

    assert argument_collisions([Data, DistillConfig]) == {"max_length": ["Data", "DistillConfig"]}


needs_dllm = pytest.mark.skipif(not dllm_available(), reason="dllm is not installed (it installs from its source)")


@needs_dllm
def test_the_recorded_field_names_are_dllms():
    from tide_plugin.integrations.dllm_args import dllm_field_names

    real = dllm_field_names()
    assert real == {"model": set(DLLM_MODEL_FIELDS), "data": set(DLLM_DATA_FIELDS), "bd3lm": set(DLLM_BD3LM_FIELDS)}


@needs_dllm
def test_dllms_argument_classes_and_ours_parse_in_one_parser(tmp_path):
    from dllm.utils import DataArguments, ModelArguments, TrainingArguments

    from tide_plugin.integrations.dllm import DllmDistillConfig

    argv = ["--model_name_or_path", str(tmp_path), "--max_length", "64", "--dtype", "float32", "--objective", "calm",
            "--block_size", "16", "--output_dir", str(tmp_path / "out"), "--use_cpu", "True"]
    model, data, config = transformers.HfArgumentParser((ModelArguments, DataArguments, DllmDistillConfig)) \
        .parse_args_into_dataclasses(argv)
    assert (model.dtype, data.max_length, config.block_size, config.pipeline) == ("float32", 64, 16, "cross")
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments, DistillArguments))
    model, data, training, distill = parser.parse_args_into_dataclasses(argv + ["--report_to", "none", "--bf16", "False"])
    assert (data.max_length, distill.objective, distill.block_size) == (64, "calm", 16)
