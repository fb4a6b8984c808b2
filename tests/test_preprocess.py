"""`tide preprocess` on the shipped chat data with real offline tokenizers, and
the whole data path: real tokenizers -> alignment -> collator chain."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch

from tide_plugin import cli
from tide_plugin.alignment import byte_table, resolve_mask_id
from tide_plugin.collators.chain import build_collator_chain
from tide_plugin.alignment.preprocess import DEMO_DATA, REPORT_FILE, load_jsonl, load_tokenizer, preprocess

# A teacher chat template that differs from the student's ChatML: a default system
# prompt and an empty think block before every assistant turn (shared vocabulary).
TEACHER_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a careful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, qwen):
    tok = copy.deepcopy(qwen)
    tok.chat_template = TEACHER_TEMPLATE
    path = tmp_path_factory.mktemp("teacher_tok")
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def shared_teacher(teacher_dir):
    return load_tokenizer(str(teacher_dir))


@pytest.fixture(scope="module")
def demo_rows():
    return load_jsonl(DEMO_DATA)


def test_shipped_demo_data(demo_rows):
    assert 200 <= len(demo_rows) <= 1000 and DEMO_DATA.stat().st_size < 400_000
    roles = [[m["role"] for m in r["messages"]] for r in demo_rows]
    assert all(r[-1] == "assistant" and "user" in r for r in roles)
    assert any(r[0] == "system" for r in roles) and any(r.count("assistant") > 1 for r in roles)
    text = [m["content"] for r in demo_rows for m in r["messages"]]
    assert sum("```python" in t for t in text) > 50 and sum("def " in t for t in text) > 50
    assert sum(any(ord(c) > 127 for c in t) for t in text) > 20
    assert len({json.dumps(r) for r in demo_rows}) == len(demo_rows)


def _check_report_against_dataset(ds, report, pipeline):
    assert report["rows_kept"] == len(ds)
    assert report["rows_in"] == report["rows_kept"] + report["discarded_prompt_too_long"] + report["discarded_invalid"]
    assert report["student_tokens"] == sum(len(x) for x in ds["input_ids"])
    assert report["teacher_tokens"] == sum(len(x) for x in ds["teacher_input_ids"])
    assert report["target_tokens"] == sum(sum(1 for v in lab if v != -100) for lab in ds["labels"])
    totals = report["totals"]
    if pipeline == "cross":
        assert totals["chunks"] == sum(ds["num_chunks"])
        for sch, tch, n in zip(ds["student_chunk_ids"], ds["teacher_chunk_ids"], ds["num_chunks"]):
            assert set(sch) - {-1} == set(range(n)) == set(tch) - {-1}
        assert 0 < totals["covered_bytes"] <= totals["content_bytes"]
        assert report["chunk_coverage"] == pytest.approx(totals["covered_bytes"] / totals["content_bytes"])
    else:
        assert totals["pairs"] == sum(len(x) for x in ds["align_student"])
        for ids, tids, ps, pt in zip(ds["input_ids"], ds["teacher_input_ids"], ds["align_student"], ds["align_teacher"]):
            assert [ids[s] for s in ps] == [tids[t] for t in pt]
            assert ps == sorted(ps) and pt == sorted(pt)


@pytest.mark.slow
def test_cli_cross_on_shipped_file(tmp_path, capsys, qwen, mistral):
    import datasets

    out = tmp_path / "cross"
    rc = cli.main(["preprocess", "--output", str(out), "--pipeline", "cross", "--num-proc", "2", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "rows kept:" in printed and "chunk coverage:" in printed and "chunks dropped by truncation:" in printed
    meta = json.loads((out / REPORT_FILE).read_text())
    report = meta["report"]
    ds = datasets.load_from_disk(str(out))
    _check_report_against_dataset(ds, report, "cross")
    assert report["rows_in"] == 320 and report["chunk_coverage"] > 0.9
    assert f"rows kept:                       {report['rows_kept']}" in printed
    # every chunk spells the same bytes on both sides, but for a leading template space (spot check of 40 rows)
    s_tab, t_tab = byte_table(qwen), byte_table(mistral)
    for k in range(0, len(ds), 8):
        row = ds[k]
        sch, tch = torch.tensor(row["student_chunk_ids"]), torch.tensor(row["teacher_chunk_ids"])
        ids, tids = torch.tensor(row["input_ids"]), torch.tensor(row["teacher_input_ids"])
        for c in range(row["num_chunks"]):
            s_bytes = s_tab.token_bytes(ids[sch == c].tolist())
            t_bytes = t_tab.token_bytes(tids[tch == c].tolist())
            assert s_bytes == t_bytes or b" " + s_bytes == t_bytes or s_bytes == b" " + t_bytes


@pytest.mark.slow
def test_cli_shared_with_local_teacher_dir(tmp_path, capsys, teacher_dir):
    import datasets

    out = tmp_path / "shared"
    rc = cli.main(
        ["preprocess", "--output", str(out), "--pipeline", "shared", "--teacher", str(teacher_dir),
         "--max-length", "256", "--num-proc", "2", "--no-progress"]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "dropped pairs (ids differ):" in printed and "pairs dropped by truncation:" in printed
    report = json.loads((out / REPORT_FILE).read_text())["report"]
    ds = datasets.load_from_disk(str(out))
    _check_report_against_dataset(ds, report, "shared")
    assert report["truncated_examples"] > 0 and max(len(x) for x in ds["input_ids"]) <= 256
    assert report["totals"]["truncated_pairs"] > 0
    # the teacher template adds a system prompt and a think block: pairs are not the identity
    assert any(ps != pt for ps, pt in zip(ds["align_student"], ds["align_teacher"]))


def test_prompt_too_long_and_invalid_rows_are_counted(qwen, mistral, demo_rows):
    long_prompt = {"messages": [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}]}
    no_answer = {"messages": [{"role": "user", "content": "hello?"}]}
    short = [r for r in demo_rows if sum(len(m["content"]) for m in r["messages"][:-1]) < 200][:6]
    rows = short + [long_prompt, no_answer]
    ds, report = preprocess(rows, mistral, qwen, pipeline="cross", max_length=128, progress=False)
    assert report.rows_in == 8 and report.discarded_prompt_too_long == 1 and report.discarded_invalid == 1
    assert report.rows_kept == len(ds) == 6
    assert any("no 'assistant' message" in r for r in report.reasons)
    assert any("prompt fills max_length=128" in r for r in report.reasons)
    assert "discarded, prompt fills length:  1" in report.format()
    assert report.totals["chunks"] == sum(ds["num_chunks"])


def test_preprocess_errors(tmp_path, qwen, mistral):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    with pytest.raises(ValueError, match="pipeline 'sane' is not one of"):
        preprocess(rows, qwen, qwen, pipeline="sane")
    with pytest.raises(ValueError, match="max_length must be a positive int or None, got 0"):
        preprocess(rows, qwen, qwen, max_length=0)
    with pytest.raises(ValueError, match="neither 'offline:<name>' .* nor a local directory"):
        load_tokenizer("Qwen/Qwen3-0.6B")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n{"text": "no messages"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected an object with a 'messages' list"):
        load_jsonl(bad)
    assert cli.main(["preprocess", "--input", str(bad), "--output", str(tmp_path / "o")]) == 2


@pytest.mark.parametrize("pipeline", ["cross", "shared"])
def test_real_tokenizers_alignment_through_collator_chain(pipeline, qwen, mistral, shared_teacher, demo_rows):
    """Real tokenizers -> alignment -> distill_pad -> noise -> comp_demo."""
    teacher = mistral if pipeline == "cross" else shared_teacher
    rows = random.Random(3).sample(demo_rows, 8)
    ds, report = preprocess(rows, teacher, qwen, pipeline=pipeline, max_length=256, progress=False)
    assert report.rows_kept == 8
    collate = build_collator_chain(
        ["distill_pad", "noise", "comp_demo"],
        distill_pad={"eos_id": qwen.eos_token_id, "pad_id": qwen.pad_token_id, "teacher_pad_id": teacher.pad_token_id},
        noise={"mask_id": resolve_mask_id(qwen), "teacher_mask_id": resolve_mask_id(teacher), "seed": 1},
        comp_demo={"seed": 1},
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)
    m_s, m_t = resolve_mask_id(qwen), resolve_mask_id(teacher)
    for batch in loader:
        assert batch.pipeline == pipeline and batch.input_ids.shape[1] % 32 == 0
        assert batch.input_ids.shape[1] <= 256
        # masks use the real mask ids, targets are only assistant content (and EOS padding)
        assert torch.equal(batch.noisy_input_ids == m_s, batch.masked)
        assert not (batch.masked & (batch.labels == -100)).any()
        v1, v2 = batch.teacher_noisy_ids[0] == m_t, batch.teacher_noisy_ids[1] == m_t
        assert torch.equal(v1 | v2, batch.teacher_masked) and not (v1 & v2).any()
        assert torch.equal(batch.teacher_view_index.bool(), v2)
        text = qwen.decode(batch.input_ids[0][batch.labels[0] != -100].tolist())
        assert text.strip()
        if pipeline == "cross":
            assert batch.chunk_active.any() and batch.chunk_active.shape[1] == batch.max_chunks
            hit = batch.teacher_masked & (batch.teacher_chunk_ids >= 0)
            assert torch.equal(hit, batch.teacher_masked)  # only chunk tokens are masked on the teacher
        else:
            for j in range(batch.batch_size):
                k = int(batch.pair_mask[j].sum())
                ps, pt = batch.pair_student[j, :k], batch.pair_teacher[j, :k]
                assert torch.equal(batch.input_ids[j, ps], batch.teacher_input_ids[j, pt])
                assert torch.equal(batch.teacher_masked[j, pt], batch.masked[j, ps])


# ------------------------------------------------------------------------------------------
# nothing lost or overwritten in silence (issue: silent failures)

CHAT = {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]}
TOOL_CHAT = {"messages": [{"role": "user", "content": "Weather?"}, {"role": "tool", "content": "sunny"},
                          {"role": "assistant", "content": "Sunny."}]}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_row_the_template_cannot_render_is_skipped_and_counted(tmp_path, capsys, qwen, mistral):
    ds, report = preprocess([CHAT, TOOL_CHAT, CHAT], mistral, qwen, pipeline="cross", progress=False)
    assert len(ds) == 2 and report.rows_in == 3 and report.discarded_unrenderable == 1
    assert any("cannot render roles ['user', 'tool', 'assistant']" in r for r in report.reasons)
    assert "discarded, template cannot render: 1" in report.format()
    data = _write(tmp_path / "chats.jsonl", [CHAT, TOOL_CHAT])
    rc = cli.main(["preprocess", "--input", str(data), "--output", str(tmp_path / "out"), "--no-progress"])
    assert rc == 0 and "discarded, template cannot render: 1" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("message", "field"),
    [({"role": "user", "content": 42}, r"messages\[0\]\.content must be a string, got int 42"),
     ({"role": None, "content": "hi"}, r"messages\[0\]\.role must be a string, got NoneType null"),
     ({"role": "user"}, r"messages\[0\]\.content must be a string, got missing")],
)
def test_non_string_content_names_file_line_and_field(tmp_path, capsys, message, field):
    bad = _write(tmp_path / "bad.jsonl", [CHAT, {"messages": [message, {"role": "assistant", "content": "ok"}]}])
    with pytest.raises(ValueError, match=rf"bad.jsonl:2: {field}"):
        load_jsonl(bad)
    assert cli.main(["preprocess", "--input", str(bad), "--output", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tide preprocess: ") and "bad.jsonl:2: messages[0]." in err[0]
    with pytest.raises(ValueError, match=rf"row 1: {field}"):
        preprocess([CHAT, {"messages": [message]}], None, None, progress=False)


@pytest.mark.slow
def test_dataset_records_its_tokenizers_and_is_not_overwritten(tmp_path, capsys, qwen, mistral):
    from tide_plugin.alignment import dataset_tokenizers, tokenizer_fingerprint

    data = _write(tmp_path / "chats.jsonl", [CHAT, CHAT])
    out = tmp_path / "ds"
    args = ["preprocess", "--input", str(data), "--output", str(out), "--no-progress"]
    assert cli.main(args) == 0
    found = dataset_tokenizers(out)
    assert found["student"]["fingerprint"] == tokenizer_fingerprint(qwen) != tokenizer_fingerprint(mistral)
    assert found["teacher"]["fingerprint"] == tokenizer_fingerprint(mistral)
    assert found["student"]["spec"] == "offline:qwen" and found["teacher"]["name"] == mistral.name_or_path
    # the fingerprint is the vocabulary's: another chat template keeps it, another token changes it
    other = copy.deepcopy(qwen)
    other.chat_template = TEACHER_TEMPLATE
    assert tokenizer_fingerprint(other) == tokenizer_fingerprint(qwen)
    other.add_tokens(["<|extra|>"])
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(qwen)
    assert dataset_tokenizers(tmp_path) == {}
    # a second run into the same folder is refused before any work, the dataset is kept
    stamp = (out / REPORT_FILE).stat().st_mtime_ns
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a dataset; pass --overwrite_output_dir" in err[0]
    assert (out / REPORT_FILE).stat().st_mtime_ns == stamp
    assert cli.main([*args, "--targets", "every_assistant_turn", "--overwrite_output_dir"]) == 0
    assert json.loads((out / REPORT_FILE).read_text())["targets"] == "every_assistant_turn"
    # a folder with other files is never replaced
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    assert cli.main([*args[:-3], "--output", str(tmp_path / "notes"), "--overwrite_output_dir", "--no-progress"]) == 2
    assert "holds files but no dataset" in capsys.readouterr().err
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
