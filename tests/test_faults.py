"""Faults survived: SIGTERM / SIGINT during harvest, train and study; two runs into one directory; a full disk.

Signals are real: a run started as a subprocess sends itself SIGTERM or SIGINT when it reports a given step or
shard (the hook wraps ``faults.progress``), so where it stops never depends on timing. The full-disk tests
mount a real tmpfs (we run as root in CI; they skip with the reason where mounting is refused).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from scaffold_sae import faults
from scaffold_sae.cache import CacheError, harvest, shard_name
from scaffold_sae.cli import main
from scaffold_sae.faults import LOCK_NAME, LockError, OutputLock
from scaffold_sae.saving import load_sae
from scaffold_sae.sae import SAEConfig
from scaffold_sae.trainer import CHECKPOINT, TensorSource, TrainConfig, train_saes

SETTINGS = dict(ctx_len=32, batch_size=4, shard_rows=300, sink_factor=1.3)

# Runs `scaffold-sae ARGS` and sends itself SIGNAL once faults.progress reports UNIT number AT.
RUNNER = textwrap.dedent("""
    import os, signal, sys
    from scaffold_sae import faults, cli
    unit, at, sig = sys.argv[1], int(sys.argv[2]), getattr(signal, sys.argv[3])
    real = faults.progress
    def progress(what, count):
        real(what, count)
        if what == unit and count == at:
            os.kill(os.getpid(), sig)
    faults.progress = progress
    cli.main(sys.argv[4:])
""")


def run_with_signal(tmp_path: Path, unit: str, at: int, sig: str, argv: list[str]) -> subprocess.CompletedProcess:
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    return subprocess.run([sys.executable, str(script), unit, str(at), sig, *argv], capture_output=True, text=True,
                          timeout=3600)  # a guard against a hang only


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_lm) -> Path:
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_lm.hf_model.save_pretrained(path)
    tiny_lm.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, tiny_lm, tiny_corpus) -> Path:
    out = tmp_path_factory.mktemp("cache") / "c"
    harvest(tiny_lm, 1, str(tiny_corpus), 1200, out, ctx_len=32, progress=False)
    return out


def train_argv(cache: Path, out: Path) -> list[str]:
    return ["train", "--cache", str(cache), "--out", str(out), "--arch", "batchtopk", "--width", "128", "--k", "8",
            "--ranks", "0,4", "--tokens", str(256 * 12), "--batch-size", "256", "--checkpoint-every", "3",
            "--no-progress"]


def sae_tensors(out: Path) -> dict:
    return {(d.name, k): v for d in sorted(p for p in out.iterdir() if p.is_dir())
            for k, v in load_sae(d).state_dict().items()}


def assert_same_saes(a: Path, b: Path) -> None:
    ta, tb = sae_tensors(a), sae_tensors(b)
    assert ta.keys() == tb.keys() and ta
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


def shard_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.glob("shard_*.safetensors"))}


# ------------------------------------------------------------------------------------------ signals


def test_sigterm_during_train_keeps_the_checkpoint_and_the_rerun_gives_the_same_weights(cache_dir, tmp_path):
    out = tmp_path / "interrupted"
    result = run_with_signal(tmp_path, "step", 7, "SIGTERM", train_argv(cache_dir, out))
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
    assert error_lines(result.stderr) == ["error: interrupted at step 7 (SIGTERM); rerun the same command to resume"]
    assert (out / CHECKPOINT).exists() and not [p for p in out.iterdir() if p.is_dir()]  # step 6's checkpoint
    assert not list(out.glob(".*.tmp"))

    main(train_argv(cache_dir, out))  # the rerun resumes from step 6
    main(train_argv(cache_dir, tmp_path / "straight"))
    assert_same_saes(out, tmp_path / "straight")
    assert not (out / CHECKPOINT).exists()


def test_sigint_during_harvest_keeps_complete_shards_and_resumes_bit_identical(model_dir, tiny_corpus, tmp_path):
    argv = ["harvest", "--model", str(model_dir), "--layer", "1", "--corpus", str(tiny_corpus), "--tokens", "1000",
            "--ctx-len", "32", "--batch-size", "4", "--shard-rows", "300", "--sink-factor", "1.3"]
    out = tmp_path / "interrupted"
    result = run_with_signal(tmp_path, "shard", 2, "SIGINT", [*argv, "--out", str(out)])
    assert result.returncode == 128 + signal.SIGINT, result.stderr[-2000:]
    assert error_lines(result.stderr) == ["error: interrupted at shard 2 (SIGINT); rerun the same command to resume"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["shards"]) == 2 and not manifest["complete"]
    assert sorted(shard_bytes(out)) == [shard_name(0), shard_name(1)]

    main([*argv, "--out", str(out)])
    main([*argv, "--out", str(tmp_path / "straight")])
    assert shard_bytes(out) == shard_bytes(tmp_path / "straight") and len(shard_bytes(out)) == 3


def test_sigterm_during_study_resumes_to_the_same_results(model_dir, tiny_corpus, tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text(json.dumps({"harvest": dict(model=str(model_dir), layer=1, corpus=str(tiny_corpus), ctx_len=32,
                                                  train_tokens=2048, eval_tokens=512, ce_tokens=128, batch_size=8),
                                  "sae": dict(width=64, k=4, ranks=[0, 2]),
                                  "train": dict(tokens=20 * 256, batch_size=256), "analyses.enabled": False}))
    argv = ["study", "--config", str(config), "--no-progress"]
    out = tmp_path / "interrupted"
    result = run_with_signal(tmp_path, "step", 12, "SIGTERM", [*argv, "--out", str(out)])
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
    assert error_lines(result.stderr) == ["error: interrupted at step 12 (SIGTERM); rerun the same command to resume"]
    assert not (out / "report").exists()

    main([*argv, "--out", str(out)])
    main([*argv, "--out", str(tmp_path / "straight")])
    got = json.loads((out / "report" / "results.json").read_text())
    want = json.loads((tmp_path / "straight" / "report" / "results.json").read_text())
    assert got["saes"] == want["saes"] and got["saes"]


# ------------------------------------------------------------------------------------------ locks

HOLDER = textwrap.dedent("""
    import sys
    from scaffold_sae.faults import OutputLock
    with OutputLock(sys.argv[1], "holder"):
        print("locked", flush=True)
        sys.stdin.read()  # hold the lock until the parent closes our stdin
""")


@pytest.fixture
def lock_holder(tmp_path):
    """Start a process that holds the lock on a directory; yields (directory, pid); ends it afterwards."""
    procs = []

    def start(directory: Path) -> int:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc.pid

    yield start
    for proc in procs:
        proc.stdin.close()
        proc.wait(timeout=60)


def tcfg() -> TrainConfig:
    return TrainConfig(tokens=64 * 8, batch_size=64, progress=False, checkpoint_every=2, init_sample_tokens=256,
                       threshold_sample_tokens=256)


def data() -> torch.Tensor:
    return torch.randn(1024, 16, generator=torch.Generator().manual_seed(0))


def test_a_second_run_into_a_locked_directory_fails_at_once_naming_the_first(tmp_path, lock_holder, capsys,
                                                                                cache_dir, tiny_lm, tiny_corpus):
    out = tmp_path / "out"
    pid = lock_holder(out)
    with pytest.raises(LockError, match=rf"{out} is in use by process {pid} on .* \(holder, since .*\): wait"):
        train_saes(TensorSource(data()), [SAEConfig(width=32, k=2)], tcfg(), out)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written beside the lock
    with pytest.raises(LockError, match=f"process {pid}"):
        harvest(tiny_lm, 1, str(tiny_corpus), 200, out, progress=False, **SETTINGS)
    with pytest.raises(SystemExit) as caught:
        main(train_argv(cache_dir, out))
    assert caught.value.code == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and f"in use by process {pid}" in errors[0] and "another --out" in errors[0]


def test_a_stale_lock_from_a_killed_run_is_taken_over(tmp_path, capsys):
    out = tmp_path / "out"
    victim = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert victim.stdout.readline().strip() == "locked"
    victim.kill()  # SIGKILL: the lock file keeps its record, the kernel drops the flock
    victim.wait()
    assert faults.read_owner(out / LOCK_NAME)["pid"] == victim.pid
    paths = train_saes(TensorSource(data()), [SAEConfig(width=32, k=2)], tcfg(), out)
    assert paths and f"taking over the lock of an earlier run (pid {victim.pid})" in capsys.readouterr().err
    assert faults.read_owner(out / LOCK_NAME) == {}  # released when the run ended


def test_the_lock_is_reentrant_within_a_process_and_released_after(tmp_path):
    with OutputLock(tmp_path, "outer"):
        with OutputLock(tmp_path, "inner"):
            assert faults.read_owner(tmp_path / LOCK_NAME)["command"] == "outer"
        assert faults.read_owner(tmp_path / LOCK_NAME)["pid"] == os.getpid()
    assert faults.read_owner(tmp_path / LOCK_NAME) == {}


# ------------------------------------------------------------------------------------------ full disk


@pytest.fixture
def small_disk(tmp_path):
    """A real tmpfs of a given size mounted under tmp_path (skips where mounting is refused)."""
    mounted = []

    def mount(size_kib: int) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(point)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'not root'})")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def fill_after(unit: str, at: int, target: Path, monkeypatch) -> None:
    """When ``unit`` ``at`` completes, fill the disk of ``target`` with a file (removed by the test later)."""
    real = faults.progress

    def progress(what, count):
        real(what, count)
        if what == unit and count == at:
            free = faults.free_bytes(target)
            with open(target / "filler", "wb") as handle:
                handle.write(b"\0" * max(0, free - 4096))
    monkeypatch.setattr(faults, "progress", progress)


def test_harvest_on_a_full_disk_fails_with_one_line_leaves_no_partial_shard_and_resumes(
        small_disk, tiny_lm, tiny_corpus, tmp_path, monkeypatch):
    disk = small_disk(256)
    with pytest.raises(CacheError, match=r"no space left on the device writing .*/big \(.* MiB free; about .* MiB "
                                         r"more is needed\): free space or use another --out, then rerun"):
        harvest(tiny_lm, 1, str(tiny_corpus), 5000, disk / "big", progress=False, **SETTINGS)
    assert not (disk / "big").exists()  # checked before any work: nothing left behind

    disk = small_disk(4096)
    out = disk / "c"
    fill_after("shard", 1, disk, monkeypatch)
    with pytest.raises(CacheError) as caught:
        harvest(tiny_lm, 1, str(tiny_corpus), 1000, out, progress=False, **SETTINGS)
    message = str(caught.value)
    assert "\n" not in message and f"writing {out / shard_name(1)}" in message and "more is needed" in message
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_NAME, "manifest.json", shard_name(0)])

    (disk / "filler").unlink()
    monkeypatch.undo()
    resumed = harvest(tiny_lm, 1, str(tiny_corpus), 1000, out, progress=False, **SETTINGS)
    harvest(tiny_lm, 1, str(tiny_corpus), 1000, tmp_path / "fresh", progress=False, **SETTINGS)
    assert resumed.n_rows == 1000 and shard_bytes(out) == shard_bytes(tmp_path / "fresh")


def test_train_on_a_full_disk_fails_with_one_line_leaves_no_partial_checkpoint_or_sae_and_resumes(
        small_disk, tmp_path, monkeypatch):
    cfgs = [SAEConfig(width=512, k=4, rank=0), SAEConfig(width=512, k=4, rank=2)]
    tiny = small_disk(64)
    with pytest.raises(OSError, match=r"no space left on the device writing .*out \(.* free; about .* MiB more is "
                                      r"needed\)"):
        train_saes(TensorSource(data()), cfgs, tcfg(), tiny / "out")
    assert not (tiny / "out").exists()  # nothing was written: the folder the run created goes with its lock

    disk = small_disk(4096)
    out = disk / "out"
    fill_after("step", 3, disk, monkeypatch)  # the checkpoint of step 4 no longer fits
    with pytest.raises(OSError) as caught:
        train_saes(TensorSource(data()), cfgs, tcfg(), out)
    message = str(caught.value)
    assert "\n" not in message and f"writing {out / CHECKPOINT}" in message and "more is needed" in message
    left = sorted(p.name for p in out.iterdir())
    assert left == sorted([LOCK_NAME, CHECKPOINT]), left  # step 2's checkpoint, no temp file, no SAE directory

    (disk / "filler").unlink()
    monkeypatch.undo()
    train_saes(TensorSource(data()), cfgs, tcfg(), out)
    train_saes(TensorSource(data()), cfgs, tcfg(), tmp_path / "straight")
    assert_same_saes(out, tmp_path / "straight")


def test_a_refused_run_removes_the_folders_its_lock_created_and_keeps_any_work(tmp_path):
    """A failure that wrote nothing but the lock and the disposable files (the study's plan.json) leaves no folder;
    one that wrote anything else keeps it all, for the rerun to resume from; a folder that was there is kept."""
    from scaffold_sae.faults import OutputLock

    def fail(out, write):
        with pytest.raises(RuntimeError):
            with OutputLock(out, "study", disposable=("plan.json",)):
                for name in write:
                    (out / name).write_text("x")
                raise RuntimeError("refused")

    fail(tmp_path / "new" / "deeper", ["plan.json"])
    assert not (tmp_path / "new").exists()
    fail(tmp_path / "work", ["plan.json", "cache.bin"])
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [LOCK_NAME, "cache.bin", "plan.json"]
    (tmp_path / "mine").mkdir()
    fail(tmp_path / "mine", ["plan.json"])
    assert (tmp_path / "mine").is_dir()
