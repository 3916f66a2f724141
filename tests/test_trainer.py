"""Lockstep trainer: resume equivalence, lockstep == separate, fast == dense, thresholds, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import D, assert_same, synthetic
from scaffold_sae.sae import ConfigError, SAEConfig
from scaffold_sae.saving import load_sae
from scaffold_sae.trainer import (TensorSource, TrainConfig, configs_from_dict, input_scale, schedule,
                                  train_saes)


def tcfg(**kw) -> TrainConfig:
    base = dict(tokens=128 * 12, batch_size=128, log_every=4, progress=False, checkpoint_every=0,
                init_sample_tokens=1024, threshold_sample_tokens=2048, dead_tokens=256, lr=3e-3)
    return TrainConfig(**{**base, **kw})


CFGS = [SAEConfig(arch="batchtopk", width=48, k=4, rank=0),
        SAEConfig(arch="matryoshka", width=48, k=4, rank=3, scaffold_tied=True),
        SAEConfig(arch="topk", width=48, k=4, rank=2, encoder_input="residual")]


class Stop(Exception):
    pass


def test_resume_after_kill_gives_same_weights(tmp_path):
    src = TensorSource(synthetic())
    full = train_saes(src, CFGS, tcfg(), tmp_path / "full")

    def kill(step, states):
        if step == 7:
            raise Stop

    with pytest.raises(Stop):
        train_saes(src, CFGS, tcfg(checkpoint_every=3), tmp_path / "resumed", on_step=kill)
    assert (tmp_path / "resumed" / "checkpoint.pt").exists()
    resumed = train_saes(src, CFGS, tcfg(checkpoint_every=3), tmp_path / "resumed")
    assert_same(full, resumed)
    assert not (tmp_path / "resumed" / "checkpoint.pt").exists()
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "train_log.jsonl").open()]
    assert steps == sorted(steps) and len(steps) == len(CFGS) * 3


def test_checkpoint_from_other_config_is_refused(tmp_path):
    src = TensorSource(synthetic())

    def kill(step, states):
        raise Stop

    with pytest.raises(Stop):
        train_saes(src, CFGS[:1], tcfg(checkpoint_every=1), tmp_path, on_step=kill)
    with pytest.raises(ConfigError, match="different configuration"):
        train_saes(src, CFGS[:1], tcfg(checkpoint_every=1, seed=5), tmp_path)


def test_lockstep_equals_separate_training(tmp_path):
    src = TensorSource(synthetic())
    together = train_saes(src, CFGS, tcfg(), tmp_path / "together")
    alone = [train_saes(src, [cfg], tcfg(), tmp_path / f"alone{i}")[0] for i, cfg in enumerate(CFGS)]
    assert_same(together, alone, atol=1e-6)


def test_fast_kernels_train_like_dense_implementation(tmp_path):
    src = TensorSource(synthetic())
    fast = train_saes(src, CFGS, tcfg(fast=True), tmp_path / "fast")
    dense = train_saes(src, CFGS, tcfg(fast=False), tmp_path / "dense")
    assert_same(fast, dense, atol=1e-4)
    logs = [[json.loads(line) for line in (tmp_path / name / "train_log.jsonl").open()]
            for name in ("fast", "dense")]
    for a, b in zip(*logs):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)


def test_runs_are_deterministic_and_learn(tmp_path):
    src = TensorSource(synthetic())
    a = train_saes(src, CFGS[:1], tcfg(tokens=128 * 30), tmp_path / "a")
    b = train_saes(src, CFGS[:1], tcfg(tokens=128 * 30), tmp_path / "b")
    assert_same(a, b, atol=0)
    log = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").open()]
    assert {"l0", "fvu", "dead", "dense", "dense_1pct", "lr", "loss"} <= set(log[0])
    assert log[-1]["fvu"] < log[0]["fvu"]
    assert log[-1]["l0"] == pytest.approx(4.0)


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_exported_threshold_reproduces_training_l0(tmp_path, arch):
    both = synthetic(12288)
    train, held_out = both[:8192], both[8192:]
    cfg = SAEConfig(arch=arch, width=64, k=6, rank=2)
    path = train_saes(TensorSource(train), [cfg], tcfg(tokens=128 * 40), tmp_path)[0]
    sae = load_sae(path)
    with torch.no_grad():
        l0 = float((sae.encode(held_out) > 0).sum(1).float().mean())
    assert abs(l0 - 6) / 6 < 0.10
    assert float(sae.threshold.min()) > 0


def test_scaffold_init_and_input_scale(tmp_path):
    x = synthetic()
    src = TensorSource(x)
    scale = input_scale(x)
    assert float((x * scale).norm(dim=1).mean()) == pytest.approx(math.sqrt(D), rel=1e-5)
    cfg = SAEConfig(arch="topk", width=32, k=4, rank=2, scaffold_init="pca")
    path = train_saes(src, [cfg], tcfg(tokens=128, lr_warmup_steps=1000), tmp_path)[0]
    sae = load_sae(path)  # one step at lr ~3e-6: U still ~ the top-2 PCs of the data
    xc = x - x.mean(0)
    top = torch.linalg.svd(xc, full_matrices=False).Vh[:2].t()
    cosines = torch.linalg.svdvals(top.t() @ (sae.U / sae.U.norm(dim=0)))
    assert float(cosines.min()) > 0.99
    assert sae.summary["input_scale"] == pytest.approx(input_scale(src.sample(1024)), rel=1e-6)


def test_schedule_warmup_and_decay():
    total = 100
    values = [schedule(s, total, 10, 0.2) for s in range(total)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[50] == 1.0 and values[80] == pytest.approx(1.0) and values[99] == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(values[80:], values[81:]))


def test_configs_from_dict_and_errors():
    cfgs, train = configs_from_dict({"arch": "topk", "width": "64", "k": 8, "ranks": "0,4,8", "tokens": 1000,
                                     "batch_size": 100})
    assert [c.rank for c in cfgs] == [0, 4, 8] and all(c.width == 64 for c in cfgs)
    assert train.tokens == 1000
    cfgs, _ = configs_from_dict({"saes": [{"rank": 2}, {"rank": 0, "k": 16}], "k": 8})
    assert [(c.rank, c.k) for c in cfgs] == [(2, 8), (0, 16)]
    with pytest.raises(ConfigError, match="unknown config field 'widht'"):
        configs_from_dict({"widht": 10})
    with pytest.raises(ConfigError, match="arch='gated' is invalid: allowed values are batchtopk"):
        configs_from_dict({"arch": "gated"})
    with pytest.raises(ConfigError, match="width='wide' is invalid"):
        configs_from_dict({"width": "wide"})
    with pytest.raises(ConfigError, match="threshold_method='median' is invalid: allowed values are sample, ema"):
        configs_from_dict({"threshold_method": "median"})


def test_cli_bad_config_exits_2_with_one_line(tmp_path, capsys):
    from scaffold_sae.cli import main
    bad = tmp_path / "cfg.yaml"
    bad.write_text("arch: gated\nwidth: 64\n")
    with pytest.raises(SystemExit) as info:
        main(["train", "--cache", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(bad)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "arch='gated'" in err and "batchtopk, matryoshka, topk, relu" in err
    with pytest.raises(SystemExit) as info:  # the flag overrides the file
        main(["train", "--cache", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(bad),
              "--arch", "topk", "--k", "0"])
    assert info.value.code == 2 and "k=0 is invalid" in capsys.readouterr().err


def test_cli_trains_from_a_real_cache(tiny_lm, tiny_corpus, tmp_path, capsys):
    from scaffold_sae.cache import harvest
    from scaffold_sae.cli import main
    from scaffold_sae.report import format_number
    harvest(tiny_lm, 1, str(tiny_corpus), 1200, tmp_path / "cache", ctx_len=32, progress=False)
    main(["train", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--arch", "batchtopk",
          "--width", "128", "--k", "8", "--ranks", "0,4", "--tokens", "2560", "--batch-size", "256",
          "--no-progress", "--log-every", "5"])
    lines = capsys.readouterr().out.splitlines()
    printed = lines[-2:]                      # the SAE directories after the table of what was trained
    names = ["batchtopk_m128_k8_r0_resin", "batchtopk_m128_k8_r4_resin"]    # the residual encoder by default
    assert [p.rsplit("/", 1)[-1] for p in printed] == names
    log = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    for name, row in zip(names, lines[2:4]):  # header, rule, one row per SAE: its last log window
        last = [r for r in log if r.get("sae") == name and "loss" in r][-1]
        assert row.split()[:5] == [name, *(format_number(last[key]) for key in ("l0", "fvu", "dead", "dense"))]
        assert row.split()[-2:] == ["10/10", "budget"]
    sae = load_sae(printed[1])
    assert sae.cfg.d_in == tiny_lm.d_model and sae.cfg.rank == 4
    cfg = json.loads((tmp_path / "out" / names[1] / "cfg.json").read_text())
    assert cfg["metadata"]["model_name"] == "tiny-llama" and cfg["metadata"]["hook_layer"] == 1
    assert cfg["metadata"]["context_size"] == 32


def test_load_only_arch_is_not_trainable(tmp_path):
    with pytest.raises(ConfigError, match="arch='jumprelu' is invalid"):
        train_saes(TensorSource(synthetic(512)), [SAEConfig(arch="jumprelu", width=16, k=2)], tcfg(), tmp_path)


def test_estimate_threshold_is_the_batch_topk_cut_of_the_sample():
    from scaffold_sae.sae import HybridSAE
    from scaffold_sae.trainer import estimate_threshold
    sae = HybridSAE(SAEConfig(arch="batchtopk", d_in=D, width=48, k=5, rank=2))
    x = synthetic(700)
    with torch.no_grad():
        thr = estimate_threshold(sae, x, 5, chunk=128)
        pre = sae.pre_activations(x).relu().flatten()
    assert thr == pytest.approx(float(pre.sort(descending=True).values[700 * 5 - 1]))
    with torch.no_grad():
        sae.threshold.fill_(thr)
        assert float((sae.encode(x) > 0).sum()) == pytest.approx(700 * 5, abs=1)


def test_tensor_source_batches_resume_and_split_across_ranks():
    src = TensorSource(torch.arange(40.0)[:, None].repeat(1, 2))
    stream = src.batches(4, seed=3)
    first = [next(stream) for _ in range(15)]  # crosses the epoch boundary (10 batches per epoch)
    skipped = src.batches(4, seed=3, skip=12)
    assert all(torch.equal(first[12 + i], next(skipped)) for i in range(3))
    r0, r1 = src.batches(4, seed=3, rank=0, world_size=2), src.batches(4, seed=3, rank=1, world_size=2)
    rows = torch.cat([next(r0) for _ in range(5)] + [next(r1) for _ in range(5)])[:, 0]
    assert sorted(rows.tolist()) == list(range(40))


def test_per_sae_seeds_change_the_init_only(tmp_path):
    """SAEConfig.seed seeds that SAE's initialisation; None means the TrainConfig seed; names say the seed."""
    src = TensorSource(synthetic())
    base = dict(arch="batchtopk", width=48, k=4, rank=2, encoder_input="residual")
    cfgs = [SAEConfig(**base), SAEConfig(**base, seed=0), SAEConfig(**base, seed=1)]
    paths = train_saes(src, cfgs, tcfg(), tmp_path)
    assert [p.name for p in paths] == ["batchtopk_m48_k4_r2_resin", "batchtopk_m48_k4_r2_resin_s0",
                                       "batchtopk_m48_k4_r2_resin_s1"]
    none, zero, one = (load_sae(p) for p in paths)
    assert torch.equal(none.W_dec, zero.W_dec) and torch.equal(none.U, zero.U)      # None = the run's seed 0
    assert not torch.allclose(zero.W_dec, one.W_dec)
    logs = [json.loads(line) for line in (tmp_path / "train_log.jsonl").open()]
    assert {rec["tokens"] for rec in logs if rec["sae"].endswith("_s1")} == \
        {rec["tokens"] for rec in logs if rec["sae"].endswith("_s0")}                 # lockstep: same batches


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_frozen_pca_scaffold_stays_exactly_the_pca_basis(tmp_path, arch):
    """PCA deflation as a hybrid: scaffold_init pca, tied, scaffold_lr_mult 0, residual encoder. After training, U
    is bit for bit the top-r PCA basis the trainer computed at init, while the dictionary did learn."""
    from scaffold_sae.sae import HybridSAE, pca_basis
    from scaffold_sae.trainer import _sample, init_b_dec

    src = TensorSource(synthetic())
    train = tcfg(tokens=128 * 20)
    cfg = SAEConfig(arch=arch, width=48, k=4, rank=3, scaffold_init="pca", scaffold_tied=True, scaffold_lr_mult=0.0,
                    encoder_input="residual")
    path = train_saes(src, [cfg], train, tmp_path)[0]
    assert path.name == f"{arch}_m48_k4_r3_tied_resin_slr0"
    sae = load_sae(path)
    sample = _sample(src, train.init_sample_tokens, train.seed)
    scaled = sample * input_scale(sample)
    expected = pca_basis(scaled, init_b_dec(scaled, train.b_dec_init), 3)
    assert torch.equal(sae.U, expected)
    fresh = SAEConfig(**{**cfg.__dict__, "d_in": D})
    assert not torch.allclose(sae.W_dec, HybridSAE(fresh, torch.Generator().manual_seed(train.seed)).W_dec)


# ------------------------------------------------------------------------------ training until converged

CONVERGE = dict(until_converged=True, heldout_every=5, heldout_tokens=512, converge_tol=0.1, converge_frac=0.2,
                lr_warmup_steps=10, tokens=128 * 150)
CONVERGE_CFGS = CFGS[::2]


def logged_curves(out) -> dict[str, dict[int, float]]:
    curves: dict[str, dict[int, float]] = {}
    for line in (out / "train_log.jsonl").open():
        record = json.loads(line)
        if "heldout_fvu" in record:
            curves.setdefault(record["sae"], {})[record["step"]] = record["heldout_fvu"]
    return curves


def slow_stop_step(curves: dict[str, dict[int, float]], tol: float, frac: float, warmup: int, budget: int):
    """The first measured step before the budget at which, for every SAE, held-out FVU improved by less than tol
    (relative) since its last measurement at a step <= (1 - frac) x that step, counted only from the warm-up's end."""
    from fractions import Fraction

    keep = 1 - Fraction(str(frac))
    for step in sorted(next(iter(curves.values()))):
        if step < warmup or step >= budget:
            continue
        ok = True
        for curve in curves.values():
            earlier = [s for s in curve if s < step and s <= keep * step]
            if not earlier or not curve[max(earlier)] - curve[step] < tol * curve[max(earlier)]:
                ok = False
        if ok:
            return step
    return None


def test_until_converged_stops_at_the_step_a_slow_reference_predicts(tmp_path):
    paths = train_saes(TensorSource(synthetic()), CONVERGE_CFGS, tcfg(**CONVERGE), tmp_path)
    curves = logged_curves(tmp_path)
    stop = slow_stop_step(curves, 0.1, 0.2, 10, 150)
    assert stop is not None and stop < 150
    assert all(max(curve) == stop for curve in curves.values())           # measured every 5 steps up to the stop
    assert all(sorted(curve) == list(range(5, stop + 1, 5)) for curve in curves.values())
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").open()]
    assert max(r["step"] for r in log if "loss" in r) == stop               # the last (partial) window is logged
    for path in paths:
        summary = load_sae(path).summary
        assert (summary["steps"], summary["max_steps"], summary["stop_reason"]) == (stop, 150, "converged")
        assert summary["tokens"] == stop * 128 and summary["heldout_fvu"] == curves[path.name][stop]
        assert summary["converged_step"] is not None and summary["converged_step"] <= stop


def test_until_converged_runs_to_the_budget_while_fvu_still_improves(tmp_path):
    train = tcfg(**{**CONVERGE, "tokens": 128 * 40, "converge_tol": 0.001})
    paths = train_saes(TensorSource(synthetic()), CONVERGE_CFGS, train, tmp_path)
    curves = logged_curves(tmp_path)
    assert slow_stop_step(curves, 0.001, 0.2, 10, 40) is None
    assert all(sorted(curve) == list(range(5, 41, 5)) for curve in curves.values())
    for path in paths:
        summary = load_sae(path).summary
        assert (summary["steps"], summary["stop_reason"]) == (40, "budget")


def test_a_converging_run_resumed_mid_way_gives_the_same_weights_and_stop(tmp_path):
    src = TensorSource(synthetic())
    full = train_saes(src, CONVERGE_CFGS, tcfg(**CONVERGE), tmp_path / "full")

    def kill(step, states):
        if step == 17:
            raise Stop

    train = tcfg(**CONVERGE, checkpoint_every=7)
    with pytest.raises(Stop):
        train_saes(src, CONVERGE_CFGS, train, tmp_path / "resumed", on_step=kill)
    resumed = train_saes(src, CONVERGE_CFGS, train, tmp_path / "resumed")
    assert_same(full, resumed, atol=0)
    assert logged_curves(tmp_path / "resumed") == logged_curves(tmp_path / "full")
    assert [load_sae(p).summary["steps"] for p in resumed] == [load_sae(p).summary["steps"] for p in full]


def test_a_torn_log_line_from_a_killed_run_does_not_stop_the_resume(tmp_path):
    """A run killed while appending leaves a torn last line in train_log.jsonl: the resume drops it (and this run's
    records past the resume point), keeps every other record, and rewrites the log atomically."""
    from scaffold_sae.trainer import _Loggers, read_log

    log = tmp_path / "train_log.jsonl"
    log.write_text('{"sae": "a", "step": 4, "loss": 1.0}\n{"sae": "b", "step": 9}\n'
                   '{"sae": "a", "step": 8, "loss": 0.5}\n{"sae": "a", "st')
    _Loggers(tmp_path, tcfg(), start_step=4, process_rank=0, names=["a"]).close()
    kept = [{"sae": "a", "step": 4, "loss": 1.0}, {"sae": "b", "step": 9}]
    assert [json.loads(line) for line in log.read_text().splitlines()] == kept == read_log(log)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_log.jsonl"]


def test_held_out_rows_are_never_trained_on_and_bad_settings_fail_with_the_fix(tmp_path):
    data = synthetic(1024)
    data[-256:] = float("nan")                     # a NaN in any training batch or init sample would poison the SAE
    path = train_saes(TensorSource(data), CONVERGE_CFGS[:1],
                      tcfg(tokens=128 * 10, heldout_every=5, heldout_tokens=256, init_sample_tokens=512), tmp_path)[0]
    assert all(torch.isfinite(t).all() for t in load_sae(path).state_dict().values())
    with pytest.raises(ConfigError, match="set heldout_every > 0"):
        tcfg(until_converged=True).validate()
    with pytest.raises(ConfigError, match="converge_frac=1.5 is invalid"):
        tcfg(converge_frac=1.5).validate()
    with pytest.raises(ConfigError, match="cannot hold out 2048"):
        train_saes(TensorSource(data), CONVERGE_CFGS[:1], tcfg(heldout_every=5, heldout_tokens=2048), tmp_path / "b")


def test_progress_bar_metrics_refresh_about_twenty_times_in_a_short_run():
    from scaffold_sae.trainer import bar_refresh_steps
    assert bar_refresh_steps(TrainConfig(log_every=50), 61) == 4  # not only at step 50 and the end
    assert bar_refresh_steps(TrainConfig(log_every=50), 5) == 1
    assert bar_refresh_steps(TrainConfig(log_every=50), 10**5) == 50  # long runs: the log steps, no extra reads


def test_auxk_over_the_dead_latents_equals_auxk_over_a_superset():
    """The CPU trainer gives AuxK the latents dead now; the GPU path a fixed superset with a mask. Same loss."""
    from scaffold_sae.sae import DeadLatents, HybridSAE

    sae = HybridSAE(SAEConfig(d_in=16, width=64, k=3, rank=2, encoder_input="residual"))
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    dead = torch.arange(64) % 5 == 0
    superset = DeadLatents(torch.arange(0, 64, 2), dead[torch.arange(0, 64, 2)] | (torch.arange(32) == 3))
    exact = DeadLatents(superset.index[superset.mask], torch.ones(int(superset.mask.sum()), dtype=torch.bool))
    a, b = sae.loss(x, dead=superset, fast=True), sae.loss(x, dead=exact, fast=True)
    assert float(a.aux) > 0 and float(a.aux) == pytest.approx(float(b.aux), rel=1e-6)
    assert float(a.loss) == pytest.approx(float(b.loss), rel=1e-6)
