"""Shared fixtures: a tiny random Llama with a small word-level tokenizer, and a small text corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import make_hf_model, make_texts, make_tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_lm(tiny_tokenizer):
    """A scaffold_sae LanguageModel over a random 2-layer Llama (d_model 64) and a word-level tokenizer."""
    from scaffold_sae.models import from_hf_model

    return from_hf_model(make_hf_model(), tiny_tokenizer, spec="tiny-llama")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A .txt corpus of 200 blank-line-separated documents (about 14k tokens)."""
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text("\n\n".join(make_texts()) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_lm):
    """The tiny model saved as a local model folder (what `--model DIR` loads)."""
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_lm.hf_model.save_pretrained(path)
    tiny_lm.tokenizer.save_pretrained(path)
    return path
