"""Shared fixtures: a tiny random Llama with a small word-level tokenizer, and a small text corpus."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

WORDS = ("the a of to and in is was for on that with as by at from it an be this are which or his her "
         "new said year city market team game film court state people music water power report night "
         "government police school company study data model energy health world house money plan").split()
SPECIALS = ["<unk>", "<pad>", "<s>", "</s>"]


def make_texts(n_docs: int = 200, seed: int = 0) -> list[str]:
    """Deterministic pseudo-documents of 20-120 words each."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 120))) + "." for _ in range(n_docs)]


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*SPECIALS, *WORDS, "."])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")


def make_hf_model(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=2, eos_token_id=3, pad_token_id=1)
    return LlamaForCausalLM(config).eval()


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
