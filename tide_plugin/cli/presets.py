"""``tide distill``'s presets: the embedded demos (run settings, models, tokenizers)."""

from __future__ import annotations

from typing import Any

_DEMO_RUN: dict[str, Any] = {
    # What both embedded demos share: short sequences, 30 steps at a high constant
    # learning rate, so a tiny model moves visibly within the three-minute budget.
    "max_length": 64,
    "teacher_max_length": 96,
    "block_size": 32,
    "max_steps": 30,
    "learning_rate": 2e-3,
    "warmup_steps": 0,
    "lr_scheduler_type": "constant",
    "per_device_train_batch_size": 4,
    "logging_steps": 2,
    "save_strategy": "no",
    "dataloader_pin_memory": False,
    "seed": 0,
}
PRESETS: dict[str, dict[str, Any]] = {
    # TIDE-Cross in miniature with a teacher that knows something: the study's trained
    # Qwen3-MoE masked-diffusion teacher and its SentencePiece-style tokenizer, shipped with
    # the package (tide_plugin.study.demo), distilled into the study's BD3LM student init
    # (byte-level BPE) on standard-library rows; Reverse CALM over chunks; held-out bits
    # per byte before and after.
    "demo": {
        "objective": "reverse_calm",
        "pipeline": "cross",
        "teacher": "bidirectional",
        "output_dir": "runs/demo",
        **_DEMO_RUN,
        "max_length": 192,
        "teacher_max_length": 256,
        "max_steps": 60,
        "learning_rate": 1e-3,
        "per_device_train_batch_size": 8,
        "logging_steps": 5,
        "teacher_dtype": "float32",  # shipped in bfloat16 to halve the bytes
    },
    # TIDE-Shared in miniature: shared vocabulary, teacher with another chat template,
    # template pairs, token TIDAL + CompDemo, block (WeDLM-style x0_xt) teacher.
    "shared": {
        "objective": "taid_aligned",
        "pipeline": "shared",
        "teacher": "block",
        "concat_order": "x0_xt",
        "use_comp_demo": True,
        "shared_vocab_size": 151646,
        "output_dir": "runs/demo-shared",
        **_DEMO_RUN,
    },
}
PRESET_MODELS = {
    "demo": {"study_assets": True, "teacher_arch": "qwen3_moe"},
    "shared": {"student_tokenizer": "offline:qwen", "teacher_tokenizer": "offline:qwen-alt-template", "teacher_arch": "qwen3"},
}

ALT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + ' says:\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant says:\\n' }}{% endif %}"
)
