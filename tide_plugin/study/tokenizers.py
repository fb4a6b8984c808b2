"""The study's tokenizers, trained on the train split with the ``tokenizers`` library,
in the conventions of the paper's pair (small vocabularies so CPU runs are quick):

- ``student``: byte-level BPE with NFC and Qwen's pre-tokenizer pattern, ChatML template
  (``<|im_start|>``, ``<|im_end|>``, ``<|endoftext|>``, ``<|mask|>``);
- ``cross`` (the pipeline-A teacher's): SentencePiece-style BPE, ``▁`` for spaces, a dummy
  prefix, byte fallback (``<0x00>``..``<0xFF>``), ``[INST]`` template, ``<mask>`` and ``<pad>``;
- ``shared`` (the pipeline-B teacher's): the student's vocabulary under another chat template.

``--tokenizers real`` uses the offline Qwen and Mistral tokenizers instead (:func:`real_tokenizers`).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..offline import MISTRAL_CHAT_TEMPLATE, QWEN_CHAT_TEMPLATE, QWEN_PATTERN

STUDENT_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>")
CROSS_SPECIALS = ("<unk>", "<s>", "</s>")
ALT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + ' says:\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant says:\\n' }}{% endif %}"
)
"""The shared teacher's template: the student's vocabulary, other role headers (docs/method.md#template-alignment)."""
KINDS = ("student", "cross", "shared")


def _texts(rows: Iterable[dict[str, Any]]) -> list[str]:
    return [m["content"] for r in rows for m in r["messages"]]


def train_student_tokenizer(rows: Iterable[dict[str, Any]], vocab_size: int) -> Any:
    """Byte-level BPE (Qwen's conventions) trained on the contents of ``rows``."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(STUDENT_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_texts(rows), trainer=trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in STUDENT_SPECIALS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        mask_token="<|mask|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=QWEN_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )


def train_cross_tokenizer(rows: Iterable[dict[str, Any]], vocab_size: int) -> Any:
    """SentencePiece-style BPE (Mistral's conventions: ``▁``, dummy prefix, byte fallback)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    probe = Tokenizer(models.BPE(unk_token="<unk>"))
    probe.normalizer = normalizer
    # merges never cross a word start while learning (as SentencePiece); the final model has none
    probe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    n_bytes = 256
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - n_bytes - 2,  # 2: <mask>, <pad> added last
        special_tokens=list(CROSS_SPECIALS),
        limit_alphabet=160,
        show_progress=False,
    )
    probe.train_from_iterator(_texts(rows), trainer=trainer)
    learned = json.loads(probe.to_str())["model"]
    vocab: dict[str, int] = {t: i for i, t in enumerate(CROSS_SPECIALS)}
    for b in range(n_bytes):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizer
    backend.pre_tokenizer = None
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CROSS_SPECIALS])
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<mask>", "<pad>")])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        chat_template=MISTRAL_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )


def shared_tokenizer(student: Any) -> Any:
    """The student's vocabulary under :data:`ALT_TEMPLATE`."""
    tok = copy.deepcopy(student)
    tok.chat_template = ALT_TEMPLATE
    return tok


def train_tokenizers(rows: list[dict[str, Any]], *, student_vocab: int, cross_vocab: int) -> dict[str, Any]:
    """``{"student", "cross", "shared"}`` tokenizers trained on ``rows``."""
    student = train_student_tokenizer(rows, student_vocab)
    return {"student": student, "cross": train_cross_tokenizer(rows, cross_vocab), "shared": shared_tokenizer(student)}


def real_tokenizers() -> dict[str, Any]:
    """The offline Qwen (student, and the shared teacher under :data:`ALT_TEMPLATE`) and
    Mistral (cross teacher) tokenizers (``--tokenizers real``)."""
    from ..offline import tokenizer

    student = tokenizer("qwen")
    return {"student": student, "cross": tokenizer("mistral"), "shared": shared_tokenizer(student)}


def save_tokenizer(tok: Any, folder: str | os.PathLike[str]) -> None:
    """``save_pretrained``, readable by both transformers lines: 5.x writes its own class
    name (``TokenizersBackend``), which 4.57's ``AutoTokenizer`` does not know, and its
    extra special tokens as a list, which 4.57 reads as a mapping; both are written in
    the form both lines read."""
    tok.save_pretrained(str(folder))
    portable_tokenizer_config(Path(folder) / "tokenizer_config.json")


def portable_tokenizer_config(config: Path) -> None:
    """Rewrite a ``tokenizer_config.json`` so transformers 4.57 and 5.x both load it."""
    data = json.loads(config.read_text())
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = data.get("extra_special_tokens")
    if isinstance(extra, list):  # 5.x's list; 4.57 expects a mapping here, the list under this key
        data.pop("extra_special_tokens")
        data["additional_special_tokens"] = extra
    config.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def save_tokenizers(toks: dict[str, Any], folder: str | os.PathLike[str]) -> None:
    for kind in ("student", "cross"):
        save_tokenizer(toks[kind], Path(folder) / kind)


def load_tokenizers(folder: str | os.PathLike[str]) -> dict[str, Any]:
    from transformers import PreTrainedTokenizerFast

    out = {}
    for kind in ("student", "cross"):
        path = Path(folder) / kind
        if not path.is_dir():
            raise FileNotFoundError(f"no {kind} tokenizer in {folder}")
        out[kind] = PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
    out["shared"] = shared_tokenizer(out["student"])
    return out
