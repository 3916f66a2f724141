"""Harvest round trip, exclusions, resume after a kill, bad inputs, and the bounded-memory shuffled reader."""

from __future__ import annotations

import errno
import json
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from scaffold_sae.faults import LOCK_NAME
import torch

from scaffold_sae import cache as cache_module
from scaffold_sae.cache import MANIFEST, ActivationCache, CacheError, harvest, shard_name, write_shard
from scaffold_sae.corpus import CorpusError, load_corpus, pack_contexts
from scaffold_sae.fetch import sha256_file

TESTS = Path(__file__).parent
SETTINGS = dict(ctx_len=32, batch_size=4, shard_rows=300, sink_factor=1.3)


def reference_rows(lm, corpus_path, layer, n_tokens, ctx_len, batch_size, sink_factor, split="train"):
    """Slow reference: residuals of every packed context, filtered position by position in plain Python."""
    contexts = pack_contexts(lm.tokenizer, load_corpus(str(corpus_path)), ctx_len, 10**9, split, seed=0)
    special = set(lm.tokenizer.all_special_ids) - {lm.bos_token_id}
    rows, tokens, positions, counts = [], [], [], {"bos": 0, "special": 0, "sink": 0}
    for start in range(0, len(contexts), batch_size):
        ids = contexts[start:start + batch_size]
        resid = lm.residual(ids, layer)
        for b in range(len(ids)):
            norms = [float(resid[b, t].norm()) for t in range(ctx_len)]
            kinds = ["bos" if int(ids[b, t]) == lm.bos_token_id else "special" if int(ids[b, t]) in special
                     else "ordinary" for t in range(ctx_len)]
            median = statistics.median_low([n for n, k in zip(norms, kinds) if k == "ordinary"])
            for t in range(ctx_len):
                if kinds[t] == "ordinary" and norms[t] > sink_factor * median:
                    kinds[t] = "sink"
                if kinds[t] == "ordinary":
                    rows.append(resid[b, t])
                    tokens.append(int(ids[b, t]))
                    positions.append(t)
                else:
                    counts[kinds[t]] += 1
        if len(rows) >= n_tokens:
            return torch.stack(rows[:n_tokens]), tokens[:n_tokens], positions[:n_tokens], counts, start + len(ids)
    raise AssertionError("corpus too small for the reference")


def read_all(cache: ActivationCache):
    acts, tokens = zip(*cache.iter_shards())
    return torch.cat(acts), torch.cat(tokens)


def shard_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.glob("shard_*.safetensors"))}


def comparable(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k != "created"}


def test_harvest_round_trip_matches_the_model(tiny_lm, tiny_corpus, tmp_path):
    cache = harvest(tiny_lm, 1, str(tiny_corpus), 1000, tmp_path / "c", progress=False, **SETTINGS)
    want, tokens, positions, counts, n_contexts = reference_rows(tiny_lm, tiny_corpus, 1, 1000, 32, 4, 1.3)
    got, got_tokens = read_all(cache)
    assert got.shape == (1000, 64) and cache.n_rows == 1000 and cache.d_model == 64
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert got_tokens.tolist() == tokens and cache.token_ids().tolist() == tokens
    assert cache.positions().tolist() == positions
    m = cache.manifest
    assert m["excluded"] == counts and counts["sink"] > 0 and counts["special"] > 0
    assert m["n_contexts"] == n_contexts and m["complete"] and not m["corpus_exhausted"]
    assert m["tokens_seen"] == m["n_rows"] + sum(m["excluded"].values()) + m["surplus"]
    assert len(m["shards"]) >= 3 and all(s["rows"] >= 300 for s in m["shards"][:-1])
    assert (m["model"], m["layer"], m["fingerprint"], m["dtype"]) == ("tiny-llama", 1, tiny_lm.fingerprint, "float32")
    assert sha256_file(tmp_path / "c" / m["shards"][0]["file"]) == m["shards"][0]["sha256"]


def test_float16_cache_reads_back_as_float32(tiny_lm, tiny_corpus, tmp_path):
    cache = harvest(tiny_lm, 0, str(tiny_corpus), 200, tmp_path / "h", dtype="float16", progress=False, **SETTINGS)
    want = reference_rows(tiny_lm, tiny_corpus, 0, 200, 32, 4, 1.3)[0]
    got, _ = read_all(cache)
    assert got.dtype == torch.float32 and cache.dtype == torch.float16
    torch.testing.assert_close(got, want.half().float(), rtol=0, atol=0)


def test_sink_factor_zero_keeps_sinks_and_bos_is_always_excluded(tiny_lm, tiny_corpus, tmp_path):
    cache = harvest(tiny_lm, 1, str(tiny_corpus), 500, tmp_path / "s", progress=False,
                    **{**SETTINGS, "sink_factor": 0})
    m = cache.manifest
    assert m["excluded"]["sink"] == 0 and m["excluded"]["bos"] == m["n_contexts"]
    assert 2 not in cache.token_ids().tolist()


def test_a_complete_cache_is_reused_not_recomputed(tiny_lm, tiny_corpus, tmp_path, monkeypatch):
    harvest(tiny_lm, 1, str(tiny_corpus), 400, tmp_path / "c", progress=False, **SETTINGS)
    monkeypatch.setattr(tiny_lm, "residual", None)  # any forward pass would now fail
    again = harvest(tiny_lm, 1, str(tiny_corpus), 400, tmp_path / "c", progress=False, **SETTINGS)
    assert again.n_rows == 400


KILLED_HARVEST = """
import os, signal, sys
from pathlib import Path
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
from scaffold_sae import cache
from scaffold_sae.cache import shards
from scaffold_sae.models import from_hf_model

model_dir, corpus, out = sys.argv[1:4]
lm = from_hf_model(AutoModelForCausalLM.from_pretrained(model_dir),
                   PreTrainedTokenizerFast.from_pretrained(model_dir), spec="tiny-llama")
real_write, calls = shards.write_shard, []

def write_then_die(path, *args):
    calls.append(path)
    if len(calls) == 3:  # die halfway through writing the third shard
        Path(path).with_name("." + Path(path).name + ".abc.tmp").write_bytes(b"half a shard")
        os.kill(os.getpid(), signal.SIGKILL)
    return real_write(path, *args)

shards.write_shard = write_then_die
cache.harvest(lm, 1, corpus, 1500, out, ctx_len=32, batch_size=4, shard_rows=300, sink_factor=1.3, progress=False)
"""


def test_resume_after_kill_is_bit_identical(tiny_lm, tiny_corpus, tmp_path):
    model_dir = tmp_path / "model"
    tiny_lm.hf_model.save_pretrained(model_dir)
    tiny_lm.tokenizer.save_pretrained(model_dir)
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILLED_HARVEST, str(model_dir), str(tiny_corpus), str(killed)],
                          capture_output=True, text=True, timeout=300, cwd=TESTS)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    partial = json.loads((killed / MANIFEST).read_text())
    assert len(partial["shards"]) == 2 and not partial["complete"]
    assert any(p.name.endswith(".tmp") for p in killed.iterdir())

    resumed = harvest(tiny_lm, 1, str(tiny_corpus), 1500, killed, progress=False, **SETTINGS)
    fresh = harvest(tiny_lm, 1, str(tiny_corpus), 1500, tmp_path / "fresh", progress=False, **SETTINGS)
    assert shard_bytes(killed) == shard_bytes(tmp_path / "fresh")
    assert comparable(resumed.manifest) == comparable(fresh.manifest)
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in (tmp_path / "fresh").iterdir())


def test_disk_full_leaves_a_valid_resumable_cache(tiny_lm, tiny_corpus, tmp_path, monkeypatch):
    real_fsync, calls = os.fsync, []

    def fsync_until_full(fd):
        calls.append(fd)
        if len(calls) == 7:  # manifest (2 fsyncs), shard 0 + manifest (4), then shard 1's data
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_until_full)
    out = tmp_path / "full"
    with pytest.raises(CacheError) as caught:
        harvest(tiny_lm, 1, str(tiny_corpus), 1000, out, progress=False, **SETTINGS)
    message = str(caught.value)
    assert f"no space left on the device writing {out / shard_name(1)}" in message and "\n" not in message
    assert "MiB more is needed" in message and "rerun the same command to resume" in message
    assert sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME) == [MANIFEST, shard_name(0)]
    partial = ActivationCache.open(out, allow_incomplete=True)
    assert len(partial.manifest["shards"]) == 1 and not partial.manifest["complete"]

    monkeypatch.setattr(os, "fsync", real_fsync)
    resumed = harvest(tiny_lm, 1, str(tiny_corpus), 1000, out, progress=False, **SETTINGS)
    harvest(tiny_lm, 1, str(tiny_corpus), 1000, tmp_path / "fresh", progress=False, **SETTINGS)
    assert shard_bytes(out) == shard_bytes(tmp_path / "fresh") and resumed.n_rows == 1000


@pytest.mark.parametrize("change", [{"layer": 0}, {"ctx_len": 16}, {"corpus": "other"}, {"dtype": "float16"}])
def test_out_dir_of_another_cache_is_refused(tiny_lm, tiny_corpus, tmp_path, change):
    other_corpus = tmp_path / "other.txt"
    other_corpus.write_text(tiny_corpus.read_text()[::-1])
    out = tmp_path / "c"
    harvest(tiny_lm, 1, str(tiny_corpus), 200, out, progress=False, **SETTINGS)
    layer = change.get("layer", 1)
    corpus = str(other_corpus if "corpus" in change else tiny_corpus)
    settings = {**SETTINGS, **{k: v for k, v in change.items() if k in ("ctx_len", "dtype")}}
    with pytest.raises(CacheError) as caught:
        harvest(tiny_lm, layer, corpus, 200, out, progress=False, **settings)
    message = str(caught.value)
    assert f"{out} holds a cache of tiny-llama layer 1" in message and "another --out or pass --overwrite" in message
    assert next(iter(change)) in message


def test_overwrite_replaces_only_cache_files(tiny_lm, tiny_corpus, tmp_path):
    out = tmp_path / "c"
    harvest(tiny_lm, 1, str(tiny_corpus), 200, out, progress=False, **SETTINGS)
    (out / "notes.md").write_text("mine")
    cache = harvest(tiny_lm, 0, str(tiny_corpus), 200, out, overwrite=True, progress=False, **SETTINGS)
    assert cache.layer == 0 and (out / "notes.md").read_text() == "mine"


def test_foreign_directory_is_refused(tiny_lm, tiny_corpus, tmp_path):
    (tmp_path / "thesis.tex").write_text("x")
    with pytest.raises(CacheError, match="holds no activation cache"):
        harvest(tiny_lm, 1, str(tiny_corpus), 200, tmp_path, progress=False, **SETTINGS)


def test_empty_corpus_is_refused_before_anything_is_written(tiny_lm, tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(CorpusError, match="is empty"):
        harvest(tiny_lm, 1, str(tmp_path / "empty.txt"), 200, tmp_path / "c", progress=False, **SETTINGS)
    assert not (tmp_path / "c").exists()


def test_disk_full_on_the_first_shard_leaves_nothing(tiny_lm, tiny_corpus, tmp_path, monkeypatch):
    def full(path, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module.shards, "write_shard", full)
    with pytest.raises(CacheError, match="no space left on the device writing .*shard_00000.safetensors"):
        harvest(tiny_lm, 1, str(tiny_corpus), 200, tmp_path / "c", progress=False, **SETTINGS)
    assert not (tmp_path / "c").exists()


@pytest.fixture
def small_cache(tiny_lm, tiny_corpus, tmp_path) -> Path:
    harvest(tiny_lm, 1, str(tiny_corpus), 700, tmp_path / "c", progress=False, **SETTINGS)
    return tmp_path / "c"


def test_truncated_shard_is_named(small_cache):
    shard = small_cache / shard_name(1)
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CacheError, match=r"shard shard_00001.safetensors of .* is truncated .*rerun the harvest"):
        ActivationCache.open(small_cache, verify="fast")


def test_corrupted_shard_is_caught_by_default(small_cache):
    shard = small_cache / shard_name(0)
    data = bytearray(shard.read_bytes())
    data[-1000] ^= 0x40
    shard.write_bytes(bytes(data))
    ActivationCache.open(small_cache, verify="fast")  # same size and header: only the checksum can tell
    with pytest.raises(CacheError, match="shard shard_00000.safetensors of .* is corrupted"):
        ActivationCache.open(small_cache)


def test_nan_shard_is_refused_even_with_a_matching_checksum(small_cache):
    manifest = json.loads((small_cache / MANIFEST).read_text())
    entry = manifest["shards"][1]
    acts = torch.randn(entry["rows"], 64)
    acts[5, 3] = float("nan")
    entry["bytes"], entry["sha256"] = write_shard(small_cache / entry["file"], acts,
                                                  torch.zeros(entry["rows"], dtype=torch.long))
    (small_cache / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="shard_00001.safetensors .* contains NaN or inf"):
        ActivationCache.open(small_cache)


def test_wrong_shape_header_and_missing_manifest(small_cache, tmp_path):
    manifest = json.loads((small_cache / MANIFEST).read_text())
    manifest["d_model"] = 65
    (small_cache / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match=r"expected \[\d+, 65\] F32"):
        ActivationCache.open(small_cache, verify="fast")
    with pytest.raises(CacheError, match="not an activation cache .*scaffold-sae harvest"):
        ActivationCache.open(tmp_path / "nowhere")


def test_rerunning_the_harvest_repairs_a_corrupted_shard(tiny_lm, tiny_corpus, small_cache):
    before = shard_bytes(small_cache)
    shard = small_cache / shard_name(1)
    shard.write_bytes(b"\0" * shard.stat().st_size)
    harvest(tiny_lm, 1, str(tiny_corpus), 700, small_cache, progress=False, **SETTINGS)
    assert shard_bytes(small_cache) == before


# --------------------------------------------------------------------------------------------- reader


def synthetic_cache(root: Path, shard_rows: list[int], d: int, dtype=torch.float32) -> ActivationCache:
    """A cache written straight through the shard writer; column 0 of row i holds i (to track rows)."""
    root.mkdir(parents=True, exist_ok=True)
    shards, offset = [], 0
    for index, rows in enumerate(shard_rows):
        acts = torch.randn(rows, d).to(dtype)
        acts[:, 0] = torch.arange(offset, offset + rows, dtype=torch.float32)
        size, digest = write_shard(root / shard_name(index), acts, torch.arange(offset, offset + rows))
        shards.append({"file": shard_name(index), "rows": rows, "bytes": size, "sha256": digest,
                       "contexts": [index, index + 1], "excluded": {"bos": 0, "special": 0, "sink": 0},
                       "surplus": 0})
        offset += rows
    manifest = {"format": cache_module.FORMAT, "version": cache_module.VERSION, "model": "synthetic",
                "fingerprint": "-", "layer": 0, "n_layers": 1, "d_model": d, "ctx_len": 1,
                "dtype": "float32" if dtype == torch.float32 else "float16", "corpus": "-", "split": "train",
                "seed": 0, "sink_factor": 0.0, "n_tokens": offset, "complete": True, "corpus_exhausted": False,
                "shards": shards}
    cache_module.shards._recount(manifest)
    (root / MANIFEST).write_text(json.dumps(manifest))
    return ActivationCache.open(root)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def ids(batches) -> list[int]:
    return [int(v) for b in batches for v in b[:, 0]]


def test_batches_shuffle_deterministically_and_cover_an_epoch(tmp_path):
    cache = synthetic_cache(tmp_path / "r", [100, 37, 80, 64, 90], d=8)
    window_mb = 150 * 4 * 8 / 2**20  # windows of about 150 rows
    first = take(cache.batches(10, seed=3, memory_mb=window_mb), 40)
    again = take(cache.batches(10, seed=3, memory_mb=window_mb), 40)
    other = take(cache.batches(10, seed=4, memory_mb=window_mb), 40)
    assert all(b.shape == (10, 8) and b.dtype == torch.float32 for b in first)
    assert ids(first) == ids(again) and ids(first) != ids(other)
    # at most 3 windows per epoch, each dropping < 10 of the 371 rows: an epoch has at least 35 batches
    assert len(set(ids(first[:35]))) == 350 and set(ids(first)) <= set(range(371))
    assert ids(first[:10]) != sorted(ids(first[:10]))


def test_skip_and_ranks(tmp_path):
    cache = synthetic_cache(tmp_path / "r", [100, 37, 80, 64, 90], d=8)
    mb = 150 * 4 * 8 / 2**20
    full = take(cache.batches(6, seed=1, memory_mb=mb), 50)
    assert ids(take(cache.batches(6, seed=1, skip=17, memory_mb=mb), 33)) == ids(full[17:])
    ranks = [take(cache.batches(3, seed=1, rank=r, world_size=2, memory_mb=mb), 25) for r in (0, 1)]
    assert not set(ids(ranks[0][:20])) & set(ids(ranks[1][:20]))
    skipped = take(cache.batches(3, seed=1, rank=1, world_size=2, skip=9, memory_mb=mb), 16)
    assert ids(skipped) == ids(ranks[1][9:])


def test_sample_and_token_ids(tmp_path):
    cache = synthetic_cache(tmp_path / "r", [50, 30, 20], d=4, dtype=torch.float16)
    sample = cache.sample(60, seed=0)
    assert sample.shape == (60, 4) and sample.dtype == torch.float32
    assert len(set(sample[:, 0].tolist())) == 60
    assert torch.equal(cache.sample(60, seed=0), sample) and not torch.equal(cache.sample(60, seed=1), sample)
    assert cache.token_ids().tolist() == list(range(100))
    with pytest.raises(CacheError, match="cannot sample 101 rows"):
        cache.sample(101)


def test_hold_out_reserves_the_last_rows_and_the_view_never_reads_them(tmp_path):
    cache = synthetic_cache(tmp_path / "r", [100, 37, 30], d=4)
    view, tail = cache.hold_out(40)                        # all 30 rows of the last shard and 10 of the one before
    assert tail[:, 0].tolist() == list(range(127, 167)) and tail.dtype == torch.float32
    assert view.n_rows == 127 and view.shard_rows == [100, 27, 0] and cache.n_rows == 167
    seen = set(ids(take(view.batches(9, seed=2, memory_mb=60 * 4 * 4 / 2**20), 60)))
    assert seen <= set(range(127)) and len(seen) > 100
    assert set(view.sample(127, seed=1)[:, 0].long().tolist()) == set(range(127))
    assert view.token_ids().tolist() == list(range(127))
    with pytest.raises(CacheError, match="cannot hold out 167 of the 167 rows"):
        cache.hold_out(167)


BOUNDED_READER = """
import resource, sys, torch
from scaffold_sae.cache import ActivationCache
torch.randn(64, 64) @ torch.randn(64, 64)  # warm up torch's allocator and threads before the limit
vm = int(next(l for l in open('/proc/self/status') if l.startswith('VmSize')).split()[1]) * 1024
limit = vm + int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
cache = ActivationCache.open(sys.argv[1])
batches, seen = cache.batches(4096, seed=0, memory_mb=24), set()
for _ in range(cache.n_rows // 4096):  # windows of 2 shards hold exactly 8 batches: a full epoch
    seen.update(next(batches)[:, 0].long().tolist())
print(len(seen), cache.n_rows, limit - vm)
"""


def test_reader_streams_a_cache_larger_than_its_memory_limit(tmp_path):
    cache = synthetic_cache(tmp_path / "big", [16_384] * 20, d=256)  # 320 MiB of float32
    size = sum(s["bytes"] for s in cache.manifest["shards"])
    budget = 160 * 2**20
    assert size > 2 * budget
    proc = subprocess.run([sys.executable, "-c", BOUNDED_READER, str(tmp_path / "big"), str(budget)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen, rows, _ = map(int, proc.stdout.split())
    assert rows == 20 * 16_384 and seen == rows

    # the same reader without the window bound really does need more than that budget
    greedy = BOUNDED_READER.replace("memory_mb=24", "memory_mb=400")
    proc = subprocess.run([sys.executable, "-c", greedy, str(tmp_path / "big"), str(budget)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and ("MemoryError" in proc.stderr or "alloc" in proc.stderr.lower())


def test_cli_harvest_errors_and_cache_info(small_cache, capsys):
    from scaffold_sae.cli import main

    main(["cache-info", str(small_cache)])
    out = capsys.readouterr().out
    assert "tiny-llama" in out and "700 float32" in out and "excluded" in out
    with pytest.raises(SystemExit) as caught:
        main(["cache-info", str(small_cache.parent / "missing")])
    assert caught.value.code == 2
    assert "not an activation cache" in capsys.readouterr().err


def test_corpus_too_short_for_one_context_leaves_nothing(tiny_lm, tmp_path):
    (tmp_path / "short.txt").write_text("\n\n".join(["the city of water"] * 3))
    with pytest.raises(CacheError, match="gave no rows to keep at ctx_len 32"):
        harvest(tiny_lm, 1, str(tmp_path / "short.txt"), 200, tmp_path / "c", progress=False, **SETTINGS)
    assert not (tmp_path / "c").exists()


def test_an_exhausted_corpus_gives_a_complete_smaller_cache(tiny_lm, tiny_corpus, tmp_path):
    cache = harvest(tiny_lm, 1, str(tiny_corpus), 10**6, tmp_path / "c", split="heldout", progress=False,
                    **SETTINGS)
    m = cache.manifest
    assert m["complete"] and m["corpus_exhausted"] and 0 < cache.n_rows < 10**6
    assert "ran out" in cache.summary()


def test_cli_harvest_prints_the_summary(tiny_lm, tiny_corpus, tmp_path, capsys):
    from scaffold_sae.cli import main

    model_dir = tmp_path / "model"
    tiny_lm.hf_model.save_pretrained(model_dir)
    tiny_lm.tokenizer.save_pretrained(model_dir)
    out = tmp_path / "c"
    main(["harvest", "--model", str(model_dir), "--layer", "1", "--corpus", str(tiny_corpus), "--tokens", "300",
          "--out", str(out), "--ctx-len", "32", "--batch-size", "4", "--dtype", "float16", "--sink-factor", "1.3"])
    printed = capsys.readouterr().out
    assert f"activation cache {out}" in printed and "300 float16 in 1 shards" in printed
    with pytest.raises(SystemExit) as caught:
        main(["harvest", "--model", str(model_dir), "--layer", "0", "--corpus", str(tiny_corpus), "--tokens",
              "300", "--out", str(out), "--ctx-len", "32", "--batch-size", "4", "--dtype", "float16"])
    assert caught.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "holds a cache of" in errors[0] and "--overwrite" in errors[0]


@pytest.mark.slow
@pytest.mark.parametrize("key,layer", [("smollm2-135m", 15), ("gemma3-270m", 9)])
def test_real_model_cache_has_no_sink_rows(key, layer, tmp_path):
    from scaffold_sae.models import load_model

    lm = load_model(key)
    cache = harvest(lm, layer, "news", 500, tmp_path / key, ctx_len=128, batch_size=4, progress=False)
    contexts = pack_contexts(lm.tokenizer, load_corpus("news"), 128, 128, "train", bos_id=lm.bos_token_id)
    first = lm.residual(contexts, layer)[0].norm(dim=-1)
    assert first[0] > 10 * first[1:].median()  # the real model does have a massive first-position sink
    norms = read_all(cache)[0].norm(dim=-1)
    assert cache.manifest["excluded"]["bos"] == cache.manifest["n_contexts"]
    assert norms.max() < 10 * norms.median() and cache.d_model == lm.d_model
