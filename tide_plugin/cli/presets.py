"""``tide distill``'s presets: the embedded demos (run settings, models, tokenizers)."""

from __future__ import annotations

from typing import Any

_DEMO_RUN: dict[str, Any] = {
    # What both embedded demos share: the study's lengths (its block is the default one), and the schedule a
    # practitioner uses to fine-tune a trained model: linear warm-up over the first 10% of
    # the steps, then cosine decay (the alignment-handbook's SFT recipes), at a peak rate a
    # tenth of the one the student init was trained with (2e-3; Llama 2 fine-tuned at 2e-5
    # after pre-training at 3e-4). Every student trains with float32 weights (tide
    # distill's default: the init ships in bfloat16, where small updates round away).
    "max_length": 192,
    "teacher_max_length": 256,
    "max_steps": 60,
    "learning_rate": 2e-4,
    "warmup_ratio": 0.1,
    "lr_scheduler_type": "cosine",
    "per_device_train_batch_size": 8,
    "logging_steps": 5,
    "save_strategy": "no",
    "dataloader_pin_memory": False,
    "seed": 0,
    "teacher_dtype": "float32",  # the teachers ship in bfloat16 to halve the bytes
}
PRESETS: dict[str, dict[str, Any]] = {
    # Cross-tokenizer distillation in miniature with a teacher that knows something: the
    # study's trained Qwen3-MoE masked-diffusion teacher and its SentencePiece-style
    # tokenizer, shipped with the package (tide_plugin.shipped), distilled into the
    # study's BD3LM student init (byte-level BPE) on standard-library rows. Three students
    # from the same init, data order and noise draws: ours (P-KL + Reverse CALM, saved),
    # the paper's TIDE-Cross (Reverse CALM as the reference defines it) and a CE-only
    # control ("none"); held-out bits per byte of each, paired against the control.
    "demo": {
        "objective": "projected_kl+reverse_calm",
        "demo_arms": "none,reverse_calm",
        "pipeline": "cross",
        "teacher": "bidirectional",
        "output_dir": "runs/demo",
        **_DEMO_RUN,
    },
    # TIDE-Shared in miniature, the same way: the study's trained block-diffusion
    # (WeDLM-style x0_xt) teacher, which reads the student's vocabulary under another chat
    # template; template pairs, token TIDAL + CompDemo. The shared vocabulary is the
    # student's whole vocabulary unless --shared_vocab_size is given; against the same
    # CE-only control.
    "shared": {
        "objective": "taid_aligned",
        "demo_arms": "none",
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
