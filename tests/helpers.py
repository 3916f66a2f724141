"""Helpers shared by several test files (test files import from here, never from each other)."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from scaffold_sae.saving import load_sae

D = 16
"""Width of the synthetic activations."""


def synthetic(n=4096, seed=0) -> torch.Tensor:
    """Sparse features plus a dense low-rank component and a large offset."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(96, D, generator=g)
    codes = (torch.rand(n, 96, generator=g) < 0.04).float() * torch.rand(n, 96, generator=g) * 3
    dense = 4 * torch.randn(n, 2, generator=g) @ torch.randn(2, D, generator=g)
    return codes @ feats + dense + 10.0


def weights(path) -> dict:
    return {k: v.detach().clone() for k, v in load_sae(path).state_dict().items()}


def assert_same(dirs_a, dirs_b, atol=1e-5):
    """The SAEs saved in dirs_a and dirs_b (pairwise) have the same tensors up to atol / rtol 1e-4."""
    for a, b in zip(dirs_a, dirs_b):
        wa, wb = weights(a), weights(b)
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.allclose(wa[key], wb[key], atol=atol, rtol=1e-4), (Path(a).name, key,
                                                                              float((wa[key] - wb[key]).abs().max()))


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
