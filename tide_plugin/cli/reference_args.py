"""The reference's model flags that ``tide distill`` accepts as aliases, and the CLI's
config class (:class:`CliDistillConfig`).

The reference is a fork of dllm: these flags are fields of dllm's ``ModelArguments``
(``dtype``, ``load_in_4bit``, the LoRA options). They live here, in the CLI adapter,
so that :class:`~tide_plugin.training.DistillArguments` parses beside dllm's own
``ModelArguments`` without a conflicting option string.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..training import DistillConfig
from ..training.reference_flags import truth

DTYPES = ("auto", "float32", "bfloat16", "float16")
LORA_OPTIONS = ("target_modules", "r", "lora_alpha", "lora_dropout", "bias", "modules_to_save")


@dataclass
class ReferenceModelArguments:
    """dllm's ``ModelArguments`` fields the reference's launch lines pass: ``dtype`` loads
    the student folder; 4-bit students and LoRA are refused (full weights are trained);
    the LoRA options are accepted and noted as without effect."""

    dtype: str | None = field(default=None, metadata={"help": "student dtype when loading a folder: auto | float32 | bfloat16 | float16"})
    load_in_4bit: bool = field(default=False, metadata={"help": "(reference; 4-bit students are refused: full weights are trained)"})
    lora: bool = field(default=False, metadata={"help": "(reference; LoRA is refused: full weights are trained)"})
    target_modules: str | None = field(default=None, metadata={"help": "(reference LoRA option)"})
    r: int | None = field(default=None, metadata={"help": "(reference LoRA option)"})
    lora_alpha: int | None = field(default=None, metadata={"help": "(reference LoRA option)"})
    lora_dropout: float | None = field(default=None, metadata={"help": "(reference LoRA option)"})
    bias: str | None = field(default=None, metadata={"help": "(reference LoRA option)"})
    modules_to_save: str | None = field(default=None, metadata={"help": "(reference LoRA option)"})

    def check_model_arguments(self) -> None:
        """Refuse what ``tide distill`` cannot do, each with one line."""
        self.lora = truth(self.lora)
        self.load_in_4bit = truth(self.load_in_4bit)
        if self.dtype not in (None, *DTYPES):
            raise ValueError(f"dtype {self.dtype!r} is not one of {DTYPES}")
        if self.lora:
            raise ValueError("lora=True is not supported: tide distill trains the student's full weights (drop --lora)")
        if self.load_in_4bit:
            raise ValueError(
                "load_in_4bit=True is not supported for the student: tide distill trains its full weights "
                "(4-bit students need LoRA adapters); drop --load_in_4bit (teachers: --teacher_load_in_4bit)"
            )

    def model_notes(self) -> list[str]:
        given = [n for n in LORA_OPTIONS if getattr(self, n) is not None]
        if not given:
            return []
        return [f"{', '.join(given)} have no effect: LoRA is off (lora=False), the full student is trained"]


@dataclass
class CliDistillConfig(DistillConfig, ReferenceModelArguments):
    """What ``tide distill`` parses: :class:`~tide_plugin.training.DistillConfig` plus
    the reference's model flags."""

    def __post_init__(self) -> None:
        self.check_model_arguments()
        super().__post_init__()

    def reference_notes(self) -> list[str]:
        return super().reference_notes() + self.model_notes()
