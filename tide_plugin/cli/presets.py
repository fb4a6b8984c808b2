"""``tide distill``'s presets: the embedded demos (run settings, models, tokenizers)."""

from __future__ import annotations

from typing import Any

_DEMO_RUN: dict[str, Any] = {
    # What both embedded demos share: the study's lengths and block, 60 steps at a
    # constant learning rate, so the student moves visibly within the three-minute budget.
    "max_length": 192,
    "teacher_max_length": 256,
    "block_size": 32,
    "max_steps": 60,
    "learning_rate": 1e-3,
    "warmup_steps": 0,
    "lr_scheduler_type": "constant",
    "per_device_train_batch_size": 8,
    "logging_steps": 5,
    "save_strategy": "no",
    "dataloader_pin_memory": False,
    "seed": 0,
    "teacher_dtype": "float32",  # the teachers ship in bfloat16 to halve the bytes
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
    },
    # TIDE-Shared in miniature, the same way: the study's trained block-diffusion
    # (WeDLM-style x0_xt) teacher, which reads the student's vocabulary under another chat
    # template; template pairs, token TIDAL + CompDemo. The shared vocabulary is the
    # student's whole vocabulary unless --shared_vocab_size is given.
    "shared": {
        "objective": "taid_aligned",
        "pipeline": "shared",
        "teacher": "block",
        "concat_order": "x0_xt",
        "use_comp_demo": True,
        "output_dir": "runs/demo-shared",
        **_DEMO_RUN,
    },
    # One tokenizer, one template (the `same` pipeline): the shipped pipeline-B teacher
    # reads the student's own ids position by position; token KL. What token objectives
    # without template pairs (kl, reverse_kl, a plugin's jsd) run on.
    "same": {
        "objective": "kl",
        "pipeline": "same",
        "teacher": "block",
        "concat_order": "x0_xt",
        "output_dir": "runs/demo-same",
        **_DEMO_RUN,
    },
}
PRESET_FOR_PIPELINE = {"cross": "demo", "shared": "shared", "same": "same"}
"""The preset a run without ``--preset`` takes when its objective implies a pipeline."""
PRESET_MODELS = {
    # study_assets: which shipped study teacher; when the weights are not shipped (a bare
    # source checkout), tiny random models on the offline tokenizers below stand in
    "demo": {"study_assets": "A", "teacher_arch": "qwen3_moe"},
    "shared": {"study_assets": "B", "teacher_arch": "qwen3"},
    "same": {"study_assets": "B", "teacher_arch": "qwen3"},
}
FALLBACK_TOKENIZERS = {
    "A": {"student_tokenizer": "offline:qwen", "teacher_tokenizer": "offline:mistral"},
    "B": {"student_tokenizer": "offline:qwen", "teacher_tokenizer": "offline:qwen-alt-template"},
}

ALT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + ' says:\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant says:\\n' }}{% endif %}"
)
