"""A flipped byte in a shard, a checkpoint or a saved SAE is caught when opened, named, with the fix;
`harvest --repair` re-harvests only the bad shards, bit-identical."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from scaffold_sae.cache import ActivationCache, CacheError, harvest, read_header, shard_name

SETTINGS = dict(ctx_len=32, batch_size=4, shard_rows=300, sink_factor=1.3)


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def shard_files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.glob("shard_*.safetensors"))}


@pytest.fixture
def cache_dir(tiny_lm, tiny_corpus, tmp_path) -> Path:
    harvest(tiny_lm, 1, str(tiny_corpus), 700, tmp_path / "c", progress=False, **SETTINGS)
    return tmp_path / "c"


def assert_names_shard_and_fix(message: str, name: str) -> None:
    assert name in message and "--repair" in message and "scaffold-sae harvest" in message, message
    assert "\n" not in message


# ------------------------------------------------------------------------------------------------- shards


def test_every_flipped_header_byte_of_a_shard_is_caught(cache_dir):
    shard = cache_dir / shard_name(1)
    original = shard.read_bytes()
    _, data_start = read_header(shard)
    for offset in range(data_start):
        flip(shard, offset)
        with pytest.raises(CacheError) as caught:
            ActivationCache.open(cache_dir)
        assert_names_shard_and_fix(str(caught.value), shard_name(1))
        shard.write_bytes(original)
    ActivationCache.open(cache_dir)


@pytest.mark.parametrize("where", [0.0, 0.5, 0.999])
def test_a_flipped_data_byte_is_caught_on_open(cache_dir, where):
    shard = cache_dir / shard_name(0)
    _, data_start = read_header(shard)
    flip(shard, data_start + int(where * (shard.stat().st_size - data_start - 1)))
    with pytest.raises(CacheError, match="shard_00000.safetensors of .* is corrupted") as caught:
        ActivationCache.open(cache_dir)
    assert_names_shard_and_fix(str(caught.value), shard_name(0))


def test_train_refuses_a_corrupted_cache_with_one_line(cache_dir, tmp_path, capsys):
    from scaffold_sae.cli import main

    flip(cache_dir / shard_name(2), -50 + (cache_dir / shard_name(2)).stat().st_size)
    with pytest.raises(SystemExit) as caught:
        main(["train", "--cache", str(cache_dir), "--out", str(tmp_path / "saes"), "--width", "32", "--k", "4",
              "--ranks", "0", "--tokens", "256", "--batch-size", "64", "--no-progress"])
    assert caught.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert_names_shard_and_fix(errors[0], shard_name(2))
    assert not (tmp_path / "saes").exists()


class CountingLM:
    """Counts the contexts the harvest runs through the model."""

    def __init__(self, lm):
        self.lm, self.contexts = lm, 0

    def __call__(self, ids, layer):
        self.contexts += len(ids)
        return type(self.lm).residual(self.lm, ids, layer)


def test_repair_reharvests_only_the_bad_shards_bit_identically(tiny_lm, tiny_corpus, cache_dir, monkeypatch,
                                                               capsys):
    before = shard_files(cache_dir)
    manifest_bytes = (cache_dir / "manifest.json").read_bytes()
    shards = ActivationCache.open(cache_dir).manifest["shards"]
    assert len(shards) == 3
    flip(cache_dir / shard_name(1), 100)  # header
    (cache_dir / shard_name(2)).unlink()  # missing
    good = (cache_dir / shard_name(0)).stat()

    counter = CountingLM(tiny_lm)
    monkeypatch.setattr(tiny_lm, "residual", counter)
    cache = harvest(tiny_lm, 1, str(tiny_corpus), 700, cache_dir, progress=False, repair=True, **SETTINGS)
    printed = capsys.readouterr().err
    assert f"repaired {shard_name(1)}" in printed and f"repaired {shard_name(2)}" in printed
    assert f"repaired {shard_name(0)}" not in printed
    assert counter.contexts == sum(s["contexts"][1] - s["contexts"][0] for s in shards[1:])
    assert shard_files(cache_dir) == before and cache.n_rows == 700
    assert (cache_dir / "manifest.json").read_bytes() == manifest_bytes
    after = (cache_dir / shard_name(0)).stat()
    assert (after.st_ino, after.st_mtime_ns) == (good.st_ino, good.st_mtime_ns)

    monkeypatch.setattr(tiny_lm, "residual", None)  # nothing bad: no forward pass, nothing written
    stats = {name: (cache_dir / name).stat().st_mtime_ns for name in before}
    harvest(tiny_lm, 1, str(tiny_corpus), 700, cache_dir, progress=False, repair=True, **SETTINGS)
    assert "nothing to repair: all 3 shards" in capsys.readouterr().err
    assert {name: (cache_dir / name).stat().st_mtime_ns for name in before} == stats


def test_repair_of_a_sliced_harvest(tiny_lm, tiny_corpus, tmp_path, monkeypatch):
    from scaffold_sae.cache import HarvestConfig, harvest_slices

    cfg = HarvestConfig(layer=1, corpus=str(tiny_corpus), n_tokens=900, **SETTINGS)
    out = tmp_path / "sliced"
    harvest_slices(tiny_lm, cfg, out, world_size=2, progress=False)
    manifest = ActivationCache.open(out).manifest
    before = shard_files(out)
    bad = next(s for s in manifest["shards"] if s["slice"] == 1)
    flip(out / bad["file"], -3 + bad["bytes"])
    counter = CountingLM(tiny_lm)
    monkeypatch.setattr(tiny_lm, "residual", counter)
    harvest(tiny_lm, 1, str(tiny_corpus), 900, out, progress=False, repair=True, **SETTINGS)
    assert shard_files(out) == before
    assert counter.contexts == bad["contexts"][1] - bad["contexts"][0]


def test_the_printed_repair_command_repairs_the_cache(tiny_lm, tiny_corpus, tmp_path, capsys):
    from scaffold_sae.cli import main

    model_dir = tmp_path / "model"
    tiny_lm.hf_model.save_pretrained(model_dir)
    tiny_lm.tokenizer.save_pretrained(model_dir)
    out = tmp_path / "c"
    main(["harvest", "--model", str(model_dir), "--layer", "1", "--corpus", str(tiny_corpus), "--tokens", "500",
          "--out", str(out), "--ctx-len", "32", "--batch-size", "4", "--shard-rows", "300", "--sink-factor", "1.3"])
    before = shard_files(out)
    flip(out / shard_name(1), 2000)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["cache-info", str(out)])
    error = capsys.readouterr().err
    command = shlex.split(error.split("`")[1])
    assert command[:2] == ["scaffold-sae", "harvest"] and command[-1] == "--repair"
    main(command[1:])
    assert f"repaired {shard_name(1)}" in capsys.readouterr().err
    assert shard_files(out) == before


def test_repair_refuses_overwrite_and_a_missing_cache(tiny_lm, tiny_corpus, tmp_path):
    with pytest.raises(CacheError, match="no activation cache to repair"):
        harvest(tiny_lm, 1, str(tiny_corpus), 700, tmp_path / "none", progress=False, repair=True, **SETTINGS)
    with pytest.raises(CacheError, match="pass one of them"):
        harvest(tiny_lm, 1, str(tiny_corpus), 700, tmp_path / "none", progress=False, repair=True,
                overwrite=True, **SETTINGS)


# -------------------------------------------------------------------------------------------- checkpoints


def synthetic_source():
    import torch

    from scaffold_sae.trainer import TensorSource

    g = torch.Generator().manual_seed(0)
    codes = (torch.rand(2048, 64, generator=g) < 0.05).float() * torch.rand(2048, 64, generator=g)
    return TensorSource(codes @ torch.randn(64, 16, generator=g) + 3.0)


def tiny_train(**kw):
    from scaffold_sae.trainer import TrainConfig

    return TrainConfig(**{**dict(tokens=128 * 8, batch_size=128, log_every=4, progress=False, checkpoint_every=3,
                                 init_sample_tokens=512, threshold_sample_tokens=512, lr=3e-3), **kw})



def sae_configs():
    from scaffold_sae.sae import SAEConfig

    return [SAEConfig(arch="batchtopk", width=32, k=4, rank=0), SAEConfig(arch="topk", width=32, k=4, rank=2)]


class Stop(Exception):
    pass


def interrupted_run(out: Path) -> Path:
    from scaffold_sae.trainer import CHECKPOINT, train_saes

    def stop(step, states):
        if step == 4:
            raise Stop

    with pytest.raises(Stop):
        train_saes(synthetic_source(), sae_configs(), tiny_train(), out, on_step=stop)
    return out / CHECKPOINT


@pytest.mark.parametrize("where,reason", [(-100, r"sha256 mismatch"), (3, r"no valid scaffold-sae checksum header"),
                                          (40, r"sha256 mismatch")])
def test_a_flipped_checkpoint_byte_stops_the_resume(tmp_path, where, reason):
    from scaffold_sae.trainer import CheckpointError, train_saes

    checkpoint = interrupted_run(tmp_path / "run")
    flip(checkpoint, where if where >= 0 else checkpoint.stat().st_size + where)
    with pytest.raises(CheckpointError) as caught:
        train_saes(synthetic_source(), sae_configs(), tiny_train(), tmp_path / "run")
    message = str(caught.value)
    assert f"checkpoint {checkpoint} is corrupted" in message and "\n" not in message
    assert re.search(reason, message)
    assert "delete it to restart training from scratch" in message
    checkpoint.unlink()  # the advice works: a fresh start
    assert len(train_saes(synthetic_source(), sae_configs(), tiny_train(), tmp_path / "run")) == 2


def test_an_intact_checkpoint_resumes(tmp_path):
    from scaffold_sae.trainer import train_saes

    checkpoint = interrupted_run(tmp_path / "run")
    assert checkpoint.read_bytes().startswith(b"scaffold-sae checkpoint sha256:")
    train_saes(synthetic_source(), sae_configs(), tiny_train(), tmp_path / "run")
    assert not checkpoint.exists()


# -------------------------------------------------------------------------------------------- saved SAEs


@pytest.mark.parametrize("name", ["sae_weights.safetensors", "scaffold.safetensors"])
@pytest.mark.parametrize("region", ["header", "data"])
def test_a_flipped_byte_in_a_saved_sae_is_named_with_the_fix(tmp_path, name, region):
    from scaffold_sae.saving import SAECorruptedError, load_sae
    from scaffold_sae.trainer import train_saes

    paths = train_saes(synthetic_source(), sae_configs(), tiny_train(checkpoint_every=0), tmp_path / "run")
    path = paths[1]
    original = (path / name).read_bytes()
    _, data_start = read_header(path / name)
    flip(path / name, 20 if region == "header" else data_start + (len(original) - data_start) // 2)
    with pytest.raises(SAECorruptedError) as caught:
        load_sae(path)
    message = str(caught.value)
    assert f"{name} of SAE {path} is corrupted" in message and "\n" not in message
    assert "re-run the `scaffold-sae train` command" in message

    train_saes(synthetic_source(), sae_configs(), tiny_train(checkpoint_every=0), tmp_path / "run")  # the fix
    assert (path / name).read_bytes() == original
    load_sae(path)


def test_eval_cli_reports_a_corrupted_sae_in_one_line(tmp_path, capsys):
    from scaffold_sae.cli import main
    from scaffold_sae.sae import HybridSAE, SAEConfig
    from scaffold_sae.saving import save_sae

    path = save_sae(HybridSAE(SAEConfig(arch="topk", d_in=8, width=16, k=2, rank=1)), tmp_path / "sae")
    flip(path / "sae_weights.safetensors", -1 + (path / "sae_weights.safetensors").stat().st_size)
    with pytest.raises(SystemExit) as caught:
        main(["eval", "--sae", str(path), "--model", "tiny", "--layer", "0"])
    assert caught.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "sae_weights.safetensors of SAE" in errors[0]


def test_sae_dirs_without_checksums_still_load(tmp_path):
    import json

    from scaffold_sae.sae import HybridSAE, SAEConfig
    from scaffold_sae.saving import load_sae, save_sae

    path = save_sae(HybridSAE(SAEConfig(arch="topk", d_in=8, width=16, k=2, rank=1)), tmp_path / "sae")
    ours = json.loads((path / "scaffold_sae.json").read_text())
    assert set(ours["sha256"]) == {"sae_weights.safetensors", "scaffold.safetensors"}
    del ours["sha256"]  # written before checksums were recorded
    (path / "scaffold_sae.json").write_text(json.dumps(ours))
    load_sae(path)
    (path / "scaffold_sae.json").unlink()  # a plain SAELens directory
    load_sae(path)
