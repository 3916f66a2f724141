"""Corpus readers, the held-out split, and packing into BOS-led contexts."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from helpers import make_texts
from scaffold_sae.corpus import CorpusError, iter_contexts, load_corpus, pack_contexts, split_of


def segments(contexts: torch.Tensor, bos: int, sep: int) -> list[tuple[int, ...]]:
    """Full documents recovered from packed contexts: the token runs strictly between two separators."""
    stream = [t for row in contexts.tolist() for t in row[1:]]
    assert bos not in stream or bos == sep
    cuts = [i for i, t in enumerate(stream) if t == sep]
    return [tuple(stream[a + 1:b]) for a, b in zip(cuts, cuts[1:])]


def test_txt_documents_are_blank_line_paragraphs(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first doc\nstill first\n\n\n  \nsecond doc\n\nthird")
    assert list(load_corpus(str(path))) == ["first doc\nstill first", "second doc", "third"]


def test_jsonl_parquet_and_folder(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.jsonl").write_text(json.dumps({"text": "json one"}) + "\n\n" + json.dumps({"text": "json two"}))
    pq.write_table(pa.table({"text": ["pq one", None, "pq two"]}), folder / "sub" / "c.parquet")
    (folder / "a.txt").write_text("txt one")
    (folder / "ignored.csv").write_text("x")
    assert list(load_corpus(str(folder))) == ["txt one", "json one", "json two", "pq one", "pq two"]

    other = tmp_path / "body.jsonl"
    other.write_text(json.dumps({"body": "x y"}) + "\n")
    assert list(load_corpus(f"{other}#body")) == ["x y"]
    with pytest.raises(CorpusError, match="no field 'text'.*#FIELD"):
        list(load_corpus(str(other)))


def test_parquet_without_pyarrow_is_one_clear_error(tmp_path, monkeypatch):
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(CorpusError, match=r"pip install 'scaffold-sae\[parquet\]'"):
        load_corpus(str(tmp_path / "d.parquet"))


def test_hf_missing_package_and_offline(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(CorpusError, match=r"pip install 'scaffold-sae\[hf\]'"):
        load_corpus("hf:wikitext")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(CorpusError) as caught:
        load_corpus("hf:wikitext:wikitext-2-raw-v1:test")
    message = str(caught.value)
    assert "\n" not in message and "hub is reachable" in message and "split test" in message


def test_hf_streams_the_named_split_and_field(monkeypatch):
    calls = []

    def load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return iter([{"content": "doc a"}, {"content": "doc b"}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert list(load_corpus("hf:org/set::validation#content")) == ["doc a", "doc b"]
    assert calls[0] == ("org/set", None, "validation", True)


@pytest.mark.parametrize("content", ["", "\n\n   \n\n"])
def test_empty_corpus_is_one_line_error(tmp_path, content):
    (tmp_path / "empty.txt").write_text(content)
    with pytest.raises(CorpusError, match="is empty"):
        load_corpus(str(tmp_path / "empty.txt"))
    with pytest.raises(CorpusError, match="is empty"):
        load_corpus(str(tmp_path))


def test_missing_path_names_accepted_forms(tmp_path):
    with pytest.raises(CorpusError, match="'news'.*hf:name"):
        load_corpus(str(tmp_path / "nope.txt"))


def test_news_is_the_embedded_default():
    docs = list(load_corpus("news"))
    assert len(docs) == 3823
    heldout = sum(split_of(d) == "heldout" for d in docs)
    assert 0.08 < heldout / len(docs) < 0.12
    assert docs[0].startswith("Betsy DeVos Confirmed as Education Secretary")


def test_pack_is_deterministic_and_starts_with_bos(tiny_tokenizer, tiny_corpus):
    corpus = load_corpus(str(tiny_corpus))
    a = pack_contexts(tiny_tokenizer, corpus, 32, 32 * 20, "train", seed=1)
    b = pack_contexts(tiny_tokenizer, corpus, 32, 32 * 20, "train", seed=1)
    c = pack_contexts(tiny_tokenizer, corpus, 32, 32 * 20, "train", seed=2)
    assert a.shape == (20, 32) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a[:, 0] == tiny_tokenizer.bos_token_id).all()
    assert not (a[:, 1:] == tiny_tokenizer.bos_token_id).any()
    # n_tokens is rounded up to whole contexts
    assert pack_contexts(tiny_tokenizer, corpus, 32, 33, "train", seed=1).shape == (2, 32)
    assert torch.equal(pack_contexts(tiny_tokenizer, corpus, 32, 33, "train", seed=1), a[:2])


def test_packing_keeps_whole_documents_of_one_split(tiny_tokenizer, tiny_corpus):
    corpus = load_corpus(str(tiny_corpus))
    tokens = {split: {tuple(tiny_tokenizer(d, add_special_tokens=False)["input_ids"])
                      for d in make_texts() if split_of(d) == split} for split in ("train", "heldout")}
    assert tokens["heldout"] and tokens["train"]
    bos, eos = tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id
    for split in ("train", "heldout"):
        packed = pack_contexts(tiny_tokenizer, corpus, 16, 10**6, split, seed=0)
        found = segments(packed, bos, eos)
        assert len(found) >= len(tokens[split]) - 2  # all but the first and a dropped tail
        assert set(found) <= tokens[split]
        other = "heldout" if split == "train" else "train"
        assert not set(found) & tokens[other]


def test_split_is_a_stable_function_of_the_text():
    assert split_of("hello world") == split_of("hello world")
    splits = [split_of(f"document number {i}") for i in range(4000)]
    assert 0.08 < splits.count("heldout") / len(splits) < 0.12


def test_too_little_text_and_bad_arguments(tiny_tokenizer, tmp_path):
    (tmp_path / "short.txt").write_text("the city")
    corpus = load_corpus(str(tmp_path / "short.txt"))
    split = split_of("the city")
    with pytest.raises(CorpusError, match="too little"):
        pack_contexts(tiny_tokenizer, corpus, 64, 1000, split)
    with pytest.raises(CorpusError, match="unknown split"):
        next(iter_contexts(tiny_tokenizer, corpus, 64, split="test"))


def test_invalid_utf8_names_the_file_and_byte_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("good line\n\ncaf".encode() + b"\xe9 au lait\n")
    with pytest.raises(CorpusError, match=r"latin1\.txt is not UTF-8 text: invalid byte 0xe9 at byte offset 14; "
                                          r"convert it to UTF-8"):
        load_corpus(str(path))
    late = tmp_path / "late.jsonl"  # past the start load_corpus checks, bad bytes fail when the reader gets there
    first = json.dumps({"text": "fine " * 20000}).encode() + b"\n"
    late.write_bytes(first + b'{"text": "\xff"}\n')
    corpus = load_corpus(str(late))
    with pytest.raises(CorpusError, match=rf"late\.jsonl is not UTF-8 text: invalid byte 0xff at byte offset "
                                          rf"{len(first) + 10};"):
        list(corpus)


def test_random_bytes_and_control_characters_are_refused(tmp_path):
    import random

    rng = random.Random(0)
    noise = tmp_path / "noise.txt"
    noise.write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
    with pytest.raises(CorpusError, match=r"noise\.txt is not UTF-8 text: invalid byte"):
        load_corpus(str(noise))
    controls = tmp_path / "controls.txt"
    controls.write_text("".join(chr(rng.randrange(32)) + "word " for _ in range(2000)))
    with pytest.raises(CorpusError, match=r"controls\.txt does not look like text: \d+% of its first 12000 characters"):
        load_corpus(str(controls))
    text = tmp_path / "tabs.txt"  # tabs, CRLF, non-ASCII letters and a few stray controls are text
    text.write_text("col\tcol\r\nnaïve café 東京 \x07bell\n\n" * 200)
    assert len(list(load_corpus(str(text)))) == 200
