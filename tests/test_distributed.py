"""Data-parallel training and sliced harvesting on CPU (gloo, 2 processes, tiny shapes, every run under a timeout).

2 ranks x B/2 == 1 process x B (weights, dead / dense counts); a rank killed mid-run fails the job cleanly and
the checkpoint resumes to the same weights; a failed checkpoint write fails every rank instead of hanging;
the global BatchTopK equals the single-process one; a 2-rank harvest equals a 1-process harvest of the same
slices; the CLI (`--nproc 2`, through torch.distributed.run) agrees with the library.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from helpers import assert_same, make_hf_model, make_tokenizer, synthetic
from scaffold_sae import distributed
from scaffold_sae.cache import ActivationCache, HarvestConfig, Harvester, harvest_slices, slice_quota
from scaffold_sae.kernels import batch_topk, device_path
from scaffold_sae.sae import SAEConfig
from scaffold_sae.trainer import TensorSource, TrainConfig, train_distributed, train_saes

TIMEOUT = 900  # a hang guard only (seconds for any multi-process run): generous, so a loaded machine cannot fail it
CFGS = [SAEConfig(arch="batchtopk", width=48, k=4, rank=0),
        SAEConfig(arch="matryoshka", width=48, k=4, rank=3, scaffold_tied=True),
        SAEConfig(arch="topk", width=48, k=4, rank=2, encoder_input="residual"),
        SAEConfig(arch="relu", width=32, rank=2, l1_coeff=0.003)]


def tcfg(batch_size: int, **kw) -> TrainConfig:
    base = dict(tokens=128 * 12, batch_size=batch_size, log_every=4, progress=False, checkpoint_every=0,
                init_sample_tokens=1024, threshold_sample_tokens=2048, dead_tokens=10**9, lr=3e-3)
    return TrainConfig(**{**base, **kw})


# ------------------------------------------------------------------------------ process harness


def _entry(rank, world, init_file, err_dir, target, args):
    """Child process: join the group, run ``target(comm, *args)``, record any error, exit non-zero on one."""
    torch.set_num_threads(1)
    try:
        comm = distributed.init(rank, world, f"file://{init_file}", "cpu", timeout_s=300)
        try:
            target(comm, *args)
        except BaseException:
            distributed.shutdown(sync=False)
            raise
        distributed.shutdown()
    except BaseException as error:  # noqa: BLE001 - reported to the parent through a file
        Path(err_dir, f"rank{rank}.err").write_text(f"{type(error).__name__}: {error}\n{traceback.format_exc()}")
        distributed.end_rank_process(1)
    distributed.end_rank_process(0)  # as a CLI rank ends: no C++ static teardown after a clean shutdown


def run_ranks(tmp_path: Path, target, *args, world: int = 2) -> tuple[list[int], dict[int, str]]:
    """Start ``world`` spawned ranks; returns their exit codes and error texts. Fails on a hang."""
    ctx = mp.get_context("spawn")
    run_dir = Path(tmp_path) / f"run_{time.monotonic_ns()}"
    run_dir.mkdir()
    init_file = run_dir / "init"
    procs = [ctx.Process(target=_entry, args=(r, world, str(init_file), str(run_dir), target, args))
             for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + TIMEOUT
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"ranks {hung} hung for more than {TIMEOUT}s"
    errors = {r: (run_dir / f"rank{r}.err").read_text() for r in range(world) if (run_dir / f"rank{r}.err").exists()}
    return [p.exitcode for p in procs], errors


def _train_target(comm, data, cfgs, train_cfg, out_dir, kill_at):
    def on_step(step, states):
        if kill_at and comm.rank == 1 and step == kill_at:
            os._exit(3)  # a rank dies without any goodbye
    train_distributed(TensorSource(data), cfgs, train_cfg, out_dir, comm, on_step=on_step)


def sae_dirs(out: Path) -> list[Path]:
    return sorted(p for p in Path(out).iterdir() if p.is_dir())


def log_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------ training


def test_two_ranks_equal_one_process_with_the_same_global_batch(tmp_path):
    data = synthetic()
    one = train_saes(TensorSource(data), CFGS, tcfg(128), tmp_path / "one")
    codes, errors = run_ranks(tmp_path, _train_target, data, CFGS, tcfg(64), str(tmp_path / "two"), 0)
    assert codes == [0, 0], errors
    assert_same(one, [tmp_path / "two" / p.name for p in one])
    # statistics computed from data agree too: dead / dense counts and L0 over the global batch
    for a, b in zip(log_records(tmp_path / "one"), log_records(tmp_path / "two")):
        assert (a["sae"], a["step"], a["tokens"], a["dead"], a["dense"]) == (b["sae"], b["step"], b["tokens"],
                                                                           b["dead"], b["dense"])
        assert a["l0"] == pytest.approx(b["l0"], rel=1e-6)
        assert a["mse"] == pytest.approx(b["mse"], rel=1e-4)
    summary_one = json.loads((one[0] / "scaffold_sae.json").read_text())
    summary_two = json.loads((tmp_path / "two" / one[0].name / "scaffold_sae.json").read_text())
    assert summary_one["summary"]["ema_threshold"] == pytest.approx(summary_two["summary"]["ema_threshold"],
                                                                    rel=1e-5)


def _sync_target(comm, data, cfgs, train_cfg, out_dir):
    from scaffold_sae.syncs import SyncRecorder
    recorder = SyncRecorder()
    train_distributed(TensorSource(data), cfgs, train_cfg, out_dir, comm, sync_recorder=recorder)
    Path(out_dir, f"syncs{comm.rank}.txt").write_text(recorder.summary())


def test_two_ranks_make_no_sync_in_the_training_steps(tmp_path):
    """Every architecture, with and without a scaffold, dead latents and AuxK on: the steps between log steps
    (global batch top-k and gradient all-reduce included) make no host-device synchronisation on either rank."""
    cfgs = [SAEConfig(**{**vars(cfg), "width": 128, "k": 2}) if cfg.arch != "relu" else cfg for cfg in CFGS]
    codes, errors = run_ranks(tmp_path, _sync_target, synthetic(), cfgs, tcfg(32, dead_tokens=128), str(tmp_path))
    assert codes == [0, 0], errors
    assert [(tmp_path / f"syncs{r}.txt").read_text() for r in range(2)] == ["", ""]
    assert max(r["dead"] for r in log_records(tmp_path)) > 0


def _last_step_target(comm, data, cfgs, train_cfg, out_dir):
    last = []
    train_distributed(TensorSource(data), cfgs, train_cfg, out_dir, comm,
                      on_step=lambda step, states: last.append(step))
    Path(out_dir, f"last{comm.rank}.json").write_text(json.dumps(last[-1]))


def test_two_ranks_stop_together_where_one_process_converges(tmp_path):
    """until_converged: both ranks measure the held-out FVU of the same global-batch chunks and agree (through a
    minimum over ranks) to stop at the step where one process with the same global batch stops."""
    data = synthetic()
    rule = dict(until_converged=True, heldout_every=4, heldout_tokens=512, converge_tol=0.25, lr_warmup_steps=4,
                tokens=128 * 100)
    one = train_saes(TensorSource(data), CFGS[:2], tcfg(128, **rule), tmp_path / "one")
    stop = json.loads((one[0] / "scaffold_sae.json").read_text())["summary"]["steps"]
    assert stop < 100
    codes, errors = run_ranks(tmp_path, _last_step_target, data, CFGS[:2], tcfg(64, **rule), str(tmp_path / "two"))
    assert codes == [0, 0], errors
    assert [json.loads((tmp_path / "two" / f"last{r}.json").read_text()) for r in range(2)] == [stop, stop]
    assert_same(one, [tmp_path / "two" / p.name for p in one])
    heldout = [[r["heldout_fvu"] for r in log_records(out) if "heldout_fvu" in r] for out in (one[0].parent,
                                                                                             tmp_path / "two")]
    assert heldout[1] == pytest.approx(heldout[0], rel=1e-4)


def test_dead_latent_counters_are_global(tmp_path):
    """With AuxK on (dead latents early), both ranks agree on which latents are dead at every step."""
    data = synthetic()
    cfg = [SAEConfig(arch="topk", width=64, k=2, rank=0, aux_k=4)]
    train_cfg = tcfg(64, dead_tokens=256, checkpoint_every=0)
    codes, errors = run_ranks(tmp_path, _record_dead_target, data, cfg, train_cfg, str(tmp_path / "out"))
    assert codes == [0, 0], errors
    dead = [json.loads((tmp_path / "out" / f"dead{r}.json").read_text()) for r in range(2)]
    assert dead[0] == dead[1]
    assert any(any(step) for step in dead[0])  # the test exercised dead latents at all


def _record_dead_target(comm, data, cfgs, train_cfg, out_dir):
    seen = []

    def on_step(step, states):
        seen.append((states[0].since_fired >= train_cfg.dead_tokens).nonzero().flatten().tolist())
    train_distributed(TensorSource(data), cfgs, train_cfg, out_dir, comm, on_step=on_step)
    Path(out_dir, f"dead{comm.rank}.json").write_text(json.dumps(seen))


def test_a_killed_rank_fails_the_job_cleanly_and_the_checkpoint_resumes(tmp_path):
    data = synthetic()
    cfg = tcfg(64, checkpoint_every=4)
    codes, errors = run_ranks(tmp_path, _train_target, data, CFGS[:2], cfg, str(tmp_path / "ref"), 0)
    assert codes == [0, 0], errors
    codes, errors = run_ranks(tmp_path, _train_target, data, CFGS[:2], cfg, str(tmp_path / "run"), 6)
    assert codes[1] == 3 and codes[0] != 0  # the survivor does not hang (run_ranks' guard) or pretend success
    assert "DistributedError" in errors[0] and "rerun the same command to resume" in errors[0]
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    assert not sae_dirs(tmp_path / "run")
    codes, errors = run_ranks(tmp_path, _train_target, data, CFGS[:2], cfg, str(tmp_path / "run"), 0)
    assert codes == [0, 0], errors
    assert_same(sae_dirs(tmp_path / "ref"), sae_dirs(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    steps = [r["step"] for r in log_records(tmp_path / "run") if r["sae"] == log_records(tmp_path / "run")[0]["sae"]]
    assert steps == sorted(set(steps))  # the log was cut back to the checkpoint, no duplicates


def test_a_failed_checkpoint_write_fails_every_rank_instead_of_hanging(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoint.pt").mkdir(parents=True)  # rank 0 cannot replace a directory with the checkpoint
    (out / "checkpoint.pt" / "x").write_text("x")
    codes, errors = run_ranks(tmp_path, _train_target, synthetic(), CFGS[:1], tcfg(64, checkpoint_every=4,
                                                                                    resume=False), str(out), 0)
    assert codes == [1, 1]  # both end (run_ranks fails a hang), neither pretends success
    assert "rank 0 failed while writing the checkpoint" in errors[1]
    assert "DistributedError" not in errors[0].splitlines()[0]  # rank 0 reports its own OS error


def _topk_target(comm, pre, k, out_dir):
    half = pre.shape[0] // 2
    mine = pre[comm.rank * half:(comm.rank + 1) * half]
    active, thr = distributed.distributed_batch_topk(mine, k, comm)
    keep = active.mask
    torch.save({"row": active.row[keep] + comm.rank * half, "col": active.col[keep], "vals": active.pre_values[keep],
                "thr": float(thr)},
               Path(out_dir, f"topk{comm.rank}.pt"))


@pytest.mark.parametrize("shift", [0.0, -2.5])
def test_global_batch_topk_equals_single_process_batch_topk(tmp_path, shift):
    g = torch.Generator().manual_seed(1)
    pre = torch.randn(64, 40, generator=g) + shift
    pre[:32] += 0.7  # the halves differ, so the local cuts differ from the global one
    codes, errors = run_ranks(tmp_path, _topk_target, pre, 3, str(tmp_path))
    assert codes == [0, 0], errors
    parts = [torch.load(tmp_path / f"topk{r}.pt") for r in range(2)]
    got = sorted(zip(torch.cat([p["row"] for p in parts]).tolist(), torch.cat([p["col"] for p in parts]).tolist()))
    with device_path():  # the fixed-shape selection, whose mask marks the kept pairs
        want_active, want_thr = batch_topk(pre, 3)
    keep = want_active.mask
    assert got == sorted(zip(want_active.row[keep].tolist(), want_active.col[keep].tolist()))
    assert parts[0]["thr"] == parts[1]["thr"] == pytest.approx(float(want_thr))
    # slow obvious reference: the 64*3 largest positive values of the whole batch
    flat = pre.flatten()
    ref = flat[flat > 0].sort(descending=True).values[:64 * 3]
    assert len(got) == len(ref)
    assert torch.equal(torch.cat([p["vals"] for p in parts]).sort(descending=True).values, ref)


# ------------------------------------------------------------------------------ harvesting

HARVEST = dict(layer=1, n_tokens=900, ctx_len=32, batch_size=4, shard_rows=150, sink_factor=1.3)


def _harvest_target(comm, corpus, out_dir):
    from scaffold_sae.models import from_hf_model

    lm = from_hf_model(make_hf_model(), make_tokenizer(), spec="tiny-llama")
    harvest_slices(lm, HarvestConfig(corpus=corpus, **HARVEST), out_dir, comm=comm, progress=False)


def _without_time(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k != "created"}


def test_two_rank_harvest_equals_one_process_harvest_of_the_same_slices(tiny_lm, tiny_corpus, tmp_path):
    codes, errors = run_ranks(tmp_path, _harvest_target, str(tiny_corpus), str(tmp_path / "two"))
    assert codes == [0, 0], errors
    one = harvest_slices(tiny_lm, HarvestConfig(corpus=str(tiny_corpus), **HARVEST), tmp_path / "one",
                                     world_size=2, progress=False)
    two = ActivationCache.open(tmp_path / "two")  # full verification of the merged shards
    m1, m2 = _without_time(one.manifest), _without_time(two.manifest)
    assert m1 == m2
    assert m2["n_rows"] == 900 and m2["slices"]["world_size"] == 2
    assert [s["n_rows"] for s in m2["slices"]["ranks"]] == [450, 450]
    assert torch.equal(one.token_ids(), two.token_ids())
    for (a, _), (b, _) in zip(one.iter_shards(), two.iter_shards()):
        assert torch.equal(a, b)
    assert not any(p.name.startswith(".slice") for p in (tmp_path / "two").iterdir())
    # each slice is exactly a plain harvest of its own sub-stream of contexts
    rows = [s["n_rows"] for s in m2["slices"]["ranks"]]
    sub = Harvester(tiny_lm, HarvestConfig(corpus=str(tiny_corpus), **{**HARVEST, "n_tokens": rows[1]},
                                                       slice_rank=1, slice_count=2), tmp_path / "s1").run(progress=False)
    assert torch.equal(sub.token_ids(), two.token_ids()[rows[0]:])
    # and a harvest into a complete sliced cache is reused, not recomputed
    again = harvest_slices(None, HarvestConfig(corpus=str(tiny_corpus), **HARVEST), tmp_path / "two",
                                       world_size=2)
    assert again.n_rows == 900


def test_slices_partition_the_context_stream():
    from scaffold_sae.cache import slice_contexts

    stream = [[i] for i in range(23)]
    parts = [list(slice_contexts(iter(stream), 4, r, 3)) for r in range(3)]
    assert parts[0] == [[i] for i in (0, 1, 2, 3, 12, 13, 14, 15)]
    assert sorted(sum(parts, [])) == stream
    assert [slice_quota(10, r, 3) for r in range(3)] == [4, 3, 3]


# ------------------------------------------------------------------------------ CLI (torch.distributed.run)


def _cli(*argv, timeout=TIMEOUT):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "scaffold_sae", *argv], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.slow
def test_cli_nproc_2_harvest_and_train_match_one_process(tiny_lm, tiny_corpus, tmp_path):
    model_dir = tmp_path / "model"
    tiny_lm.hf_model.save_pretrained(model_dir)
    tiny_lm.tokenizer.save_pretrained(model_dir)
    res = _cli("harvest", "--model", str(model_dir), "--layer", "1", "--corpus", str(tiny_corpus), "--tokens", "2048",
               "--out", str(tmp_path / "cache"), "--ctx-len", "32", "--batch-size", "4", "--shard-rows", "300",
               "--sink-factor", "1.3", "--nproc", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    from scaffold_sae.models import load_model

    one = harvest_slices(load_model(str(model_dir)), HarvestConfig(
        layer=1, corpus=str(tiny_corpus), n_tokens=2048, ctx_len=32, batch_size=4, shard_rows=300, sink_factor=1.3),
        tmp_path / "cache1", world_size=2, progress=False)
    assert _without_time(one.manifest) == _without_time(ActivationCache.open(tmp_path / "cache").manifest)

    common = ["--cache", str(tmp_path / "cache"), "--arch", "batchtopk", "--width", "32", "--k", "4",
              "--ranks", "0,2", "--tokens", str(128 * 8), "--lr", "0.003", "--dead-tokens", "1000000000",
              "--log-every", "4", "--checkpoint-every", "4", "--no-progress"]
    res = _cli("train", *common, "--batch-size", "64", "--nproc", "2", "--out", str(tmp_path / "two"))
    assert res.returncode == 0, res.stderr[-3000:]
    res1 = _cli("train", *common, "--batch-size", "128", "--out", str(tmp_path / "one"))
    assert res1.returncode == 0, res1.stderr[-3000:]
    assert_same(sae_dirs(tmp_path / "one"), sae_dirs(tmp_path / "two"))
    paths = [str(p) for p in sae_dirs(tmp_path / "two")]   # the per-SAE table, then one path per SAE
    assert [line for line in res.stdout.splitlines() if line.strip()][-len(paths):] == paths


@pytest.mark.slow
def test_cli_nproc_failure_is_one_clear_line(tmp_path):
    res = _cli("train", "--cache", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--nproc", "2",
               "--no-progress")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("error: train with 2 processes failed")


def test_cli_argv_round_trip():
    import argparse

    ns = argparse.Namespace(func=print, command="train", nproc=2, cache="c", out="o", ranks="0,8", batch_size=64,
                            progress=False, fast=None, overwrite=False, scaffold_tied="true")
    argv = distributed.cli_argv(ns, negations={"progress": "--no-progress", "fast": "--slow"})
    assert argv == ["--cache", "c", "--out", "o", "--ranks", "0,8", "--batch-size", "64", "--no-progress",
                    "--scaffold-tied", "true"]


def test_devices_policy_on_cpu():
    from scaffold_sae.devices import DeviceError, lm_batch_for_memory, lm_dtype, resolve_device

    assert lm_dtype("auto", "cpu") == torch.float32
    with pytest.raises(DeviceError, match="--lm-dtype float32"):
        lm_dtype("bfloat16", "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(DeviceError, match="--device cpu"):
            resolve_device("cuda")
    small = lm_batch_for_memory(8 * 2**30, 1024, 2304, 13)
    assert 1 <= small < lm_batch_for_memory(80 * 2**30, 1024, 2304, 13) <= 256
