"""
TIDE distillation in a dllm script: dllm's argument classes and loaders, the
distillation trainer of tide_plugin (dllm's BD3LMTrainer underneath), the objective
by its registered name, CompDemo by a flag, dllm's schedulers by name.

Local users
------------
- CPU / 1 GPU (pipeline A: cross-tokenizer teacher, Reverse CALM):
    accelerate launch \\
        --config_file tide_plugin/configs/ddp.yaml --num_processes 1 \\
        examples/dllm_distill.py \\
        --model_name_or_path .models/a2d/Qwen3-0.6B \\
        --teacher_model_name_or_path .models/LLaDA2.0-mini \\
        --dataset_args "tatsu-lab/alpaca[train:5000]" \\
        --objective reverse_calm --alm_temperature 5.0

- 8 GPUs (ZeRO-2), pipeline B (block teacher, shared vocabulary, TIDAL + CompDemo):
    accelerate launch \\
        --config_file tide_plugin/configs/zero2.yaml \\
        examples/dllm_distill.py \\
        --teacher_model_name_or_path .models/WeDLM-8B --teacher block --concat_order x0_xt \\
        --objective taid_aligned --use_comp_demo True --shared_vocab_size 151646

Other flags: every field of dllm's ModelArguments / DataArguments and of
tide_plugin's DllmDistillConfig (dllm's BD3LMConfig plus the distillation fields),
e.g. --masking_schedule CosineAlphaScheduler, --heldout heldout.jsonl.
"""

import os
from dataclasses import dataclass, field

import accelerate
import transformers

import dllm
from tide_plugin.alignment.preprocess import load_tokenizer, preprocess
from tide_plugin.integrations.dllm import DllmDistillConfig
from tide_plugin.training import build_trainer

logger = dllm.utils.get_default_logger(__name__)


@dataclass
class ModelArguments(dllm.utils.ModelArguments):
    model_name_or_path: str = ".models/a2d/Qwen3-0.6B"
    teacher_model_name_or_path: str = None
    teacher_tokenizer: str = field(default=None, metadata={"help": "default: the teacher folder's"})


@dataclass
class DataArguments(dllm.utils.DataArguments):
    dataset_args: str = "tatsu-lab/alpaca"
    max_length: int = 512
    load_preprocessed_data: bool = field(default=False, metadata={"help": "dataset_args is a `tide preprocess` folder"})
    heldout: str = field(default=None, metadata={"help": "chat JSONL scored in bits per byte at evaluation"})


@dataclass
class TrainingArguments(DllmDistillConfig):
    output_dir: str = ".models/a2d/Qwen3-0.6B/tide"
    objective: str = "reverse_calm"
    learning_rate: float = 5e-5
    per_device_train_batch_size: int = 4
    block_size: int = 32


def align(dataset, tokenizer, teacher_tokenizer, data_args, training_args):
    """dllm's SFT rows (``messages``) -> the rows of the run's pipeline."""
    if training_args.pipeline == "same":  # one tokenizer: dllm's own SFT mapping
        return dataset.map(dllm.utils.default_sft_map_fn, fn_kwargs={"tokenizer": tokenizer}, num_proc=data_args.num_proc)
    cut = None if data_args.truncation == "filter" else data_args.max_length
    out = {}
    for split, rows in dataset.items():
        out[split], _ = preprocess(rows, teacher_tokenizer, tokenizer, pipeline=training_args.pipeline, max_length=cut,
                                   num_proc=data_args.num_proc, progress=False)
        if cut is None:
            out[split] = out[split].filter(lambda r: len(r["input_ids"]) <= data_args.max_length)
    return out


def train():
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    dllm.utils.print_args_main(model_args, data_args, training_args)
    dllm.utils.initial_training_setup(model_args, data_args, training_args)

    model = dllm.utils.get_model(model_args=model_args)
    tokenizer = dllm.utils.get_tokenizer(model_args=model_args)
    teacher_tokenizer = load_tokenizer(model_args.teacher_tokenizer or model_args.teacher_model_name_or_path)

    with accelerate.PartialState().local_main_process_first():
        dataset = dllm.data.load_sft_dataset(data_args.dataset_args, load_preprocessed_data=data_args.load_preprocessed_data)
        if not data_args.load_preprocessed_data:
            dataset = align(dataset, tokenizer, teacher_tokenizer, data_args, training_args)

    accelerate.PartialState().wait_for_everyone()
    trainer = build_trainer(
        training_args,
        student=model,
        teacher_model=model_args.teacher_model_name_or_path,
        train_dataset=dataset["train"],
        eval_dataset=dataset.get("test"),
        heldout=data_args.heldout,
        student_tokenizer=tokenizer,
        teacher_tokenizer=teacher_tokenizer,
        backend="dllm",
    )
    trainer.train()
    final = os.path.join(training_args.output_dir, "checkpoint-final")
    trainer.save_model(final)
    trainer.processing_class.save_pretrained(final)
    return trainer


if __name__ == "__main__":
    train()
