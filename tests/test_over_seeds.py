"""scaffold_sae.over_seeds, which turns per-seed records into over-seeds tables (and results/scripts/design_seeds.py,
its command line for legacy experiment P): their numbers against a direct computation (mean, sample sd, Student-t
quantile from scipy)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from scaffold_sae.over_seeds import causal_seeds_table, probing_seeds_table, read_record, redundancy_seeds_table

SCRIPTS = Path(__file__).resolve().parents[1] / "results" / "scripts"


def run_script(name: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True, check=True)
    return done.stdout


def reference(values) -> tuple[float, float, float, float]:
    v = np.asarray(values, dtype=float)
    mean, sd = v.mean(), v.std(ddof=1)
    half = stats.t.ppf(0.975, len(v) - 1) * sd / np.sqrt(len(v))
    return mean, sd, mean - half, mean + half


def sae_record(dense: int, fvu: float, ce: float, dead: int) -> dict:
    return {"dense_10": dense, "fvu": fvu, "ce_score_zero": ce, "dead": dead}


def test_design_seeds_gives_per_seed_values_and_paired_t_intervals(tmp_path):
    plain, tied = [53, 54, 50], [0, 1, 0]
    fvu_plain, fvu_tied = [0.0706, 0.0708, 0.0700], [0.0500, 0.0498, 0.0503]
    a = {"saes": {f"plain_s{s}": sae_record(plain[s], fvu_plain[s], 0.92, 9) for s in range(3)}}
    b = {"saes": {f"tied_s{s}": sae_record(tied[s], fvu_tied[s], 0.95, 0) for s in range(3)}}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    out = run_script("design_seeds.py", "--seeds", "3", f"plain={tmp_path / 'a.json'}:plain_s{{s}}",
                     f"tied={tmp_path / 'b.json'}:tied_s{{s}}", "--pairs", "tied-plain")
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in out.splitlines()[2:]}
    assert set(rows) == {"plain", "tied", "tied - plain (paired by seed)"}
    mean, sd, low, high = reference(np.subtract(tied, plain))
    assert rows["tied - plain (paired by seed)"][0] == (f"-53, -53, -50; {mean:.4g} ± {sd:.2g} "
                                                         f"[{low:.4g}, {high:.4g}]")
    mean, sd, low, high = reference(fvu_tied)
    assert rows["tied"][1] == f"0.05, 0.0498, 0.0503; {mean:.4g} ± {sd:.2g} [{low:.4g}, {high:.4g}]"


def test_causal_seeds_reads_the_scaffold_against_pca_ratio_under_the_same_operator(tmp_path):
    values = [1.42, 1.49, 2.06]
    paths = []
    for s, v in enumerate(values):
        comparisons = [
            {"numerator": "scaffold:zero", "denominator": "pca:zero", "positions": "all",
             "ce_ratio": {"value": v, "low": v - 0.02, "high": v + 0.02}},
            {"numerator": "scaffold:zero", "denominator": "pca:mean", "positions": "all",  # unlike operators: left out
             "ce_ratio": {"value": 9.0, "low": 8.0, "high": 10.0}}]
        path = tmp_path / f"seed{s}.json"
        path.write_text(json.dumps({"analyses": {"ablation_table": {"comparisons": comparisons}}}))
        paths.append(str(path))
    lines = causal_seeds_table([read_record(p) for p in paths]).splitlines()
    assert len(lines) == 3
    mean, sd, low, high = reference(values)
    assert lines[2] == ("| zero, all | 1.420 [1.400, 1.440] | 1.490 [1.470, 1.510] | 2.060 [2.040, 2.080] | "
                        f"{mean:.3f} ± {sd:.3f} [{low:.3f}, {high:.3f}] |")


def redundancy_record(aligned: dict[str, float], random: dict[str, float], scaffold: dict[str, float]) -> dict:
    def estimate(v: float) -> dict:
        return {"value": v, "low": v - 0.01, "high": v + 0.02}

    curve = [{"n": n, "operator": op, "paper_share": n == 98, "aligned": estimate(aligned[op] if n == 98 else 9.0),
              "random": estimate(random[op] if n == 98 else 9.0)} for n in (1, 98, 2048) for op in ("zero", "mean")]
    return {"results": {"redundancy": {
        "curve": curve, "scaffold_removed": {op: estimate(v) for op, v in scaffold.items()}, "n_aligned": 118,
        "dense_aligned": 31, "dense_latents": 53, "curve_contexts": 200}}}


def test_redundancy_seeds_reads_the_paper_share_and_bounds_each_seeds_difference(tmp_path):
    aligned = [{"zero": 1.63, "mean": 1.35}, {"zero": 1.70, "mean": 1.40}, {"zero": 1.66, "mean": 1.30}]
    random = [{"zero": 1.46, "mean": 1.28}, {"zero": 1.50, "mean": 1.29}, {"zero": 1.40, "mean": 1.20}]
    scaffold = [{"zero": 2.93, "mean": 1.10}, {"zero": 3.10, "mean": 1.12}, {"zero": 2.80, "mean": 1.05}]
    paths = []
    for s in range(3):
        path = tmp_path / f"seed{s}.json"
        path.write_text(json.dumps(redundancy_record(aligned[s], random[s], scaffold[s])))
        paths.append(str(path))
    out = redundancy_seeds_table([read_record(p) for p in paths], "gemma") + "\n"
    assert out.startswith("## gemma\n")
    assert "- seed 1: N = 98 (the paper's share), 118 above the alignment threshold (31 of 53 dense), 200 contexts" in out
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in out.splitlines() if " | " in line}
    diffs = [a["mean"] - c["mean"] for a, c in zip(aligned, scaffold)]
    mean, sd, low, high = reference(diffs)
    # each seed's bounds: (a - 0.01) - (c + 0.02) and (a + 0.02) - (c - 0.01)
    assert rows["mean: aligned - scaffold"][0] == f"{diffs[0]:.3f} [{diffs[0] - 0.03:.3f}, {diffs[0] + 0.03:.3f}]"
    assert rows["mean: aligned - scaffold"][3] == f"{mean:.3f} ± {sd:.3f} [{low:.3f}, {high:.3f}] |"
    mean, sd, low, high = reference([r["zero"] for r in random])
    assert rows["zero: random (density-matched)"][3] == f"{mean:.3f} ± {sd:.3f} [{low:.3f}, {high:.3f}] |"
    assert len(rows) == 1 + 10  # header + 5 readings per operator; the n = 1 and n = 2048 points are left out


def test_probing_seeds_tpp_differences_are_paired_by_seed(tmp_path):
    plain, hybrid = [0.361, 0.285, 0.329], [0.030, 0.034, 0.030]
    paths = []
    for s in range(3):
        tpp = [{"dataset": "bbc_topic", "rank": r, "n_ablated": 50, "score": v[s]} for r, v in ((0, plain), (8, hybrid))]
        path = tmp_path / f"seed{s}.json"
        path.write_text(json.dumps({"analyses": {"probing": {"paired": [], "sparse": [], "tpp": tpp}}}))
        paths.append(str(path))
    rows = [line for line in probing_seeds_table([read_record(p) for p in paths], paths).splitlines()
            if line.startswith("| bbc_topic")]
    mean, sd, low, high = reference(np.subtract(hybrid, plain))
    assert rows == [f"| bbc_topic | 50 | 0.361, 0.285, 0.329 | 0.030, 0.034, 0.030 | "
                    f"{mean:+.3f} ± {sd:.3f} [{low:+.3f}, {high:+.3f}] |"]


def test_a_run_folded_into_its_experiments_summary_is_read_by_its_old_path(tmp_path):
    from scaffold_sae.summary import dumps

    table = {"analyses": {"ablation_table": {"comparisons": [
        {"numerator": "scaffold:zero", "denominator": "pca:zero", "positions": "all",
         "ce_ratio": {"value": 1.5, "low": 1.4, "high": 1.6}}]}}}
    folder = tmp_path / "results" / "some-slug"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(dumps({"experiment": {}, "runs": {"seed1/table.json": table}}))
    assert read_record(folder / "seed1" / "table.json") == table
    assert read_record(folder / "seed1" / "analyses.json") == {"results": table["analyses"]}
    with pytest.raises(FileNotFoundError, match="has no run 'seed2/table.json' \\(its runs: seed1/table.json\\)"):
        read_record(folder / "seed2" / "table.json")
    (tmp_path / "seed0.json").write_text(json.dumps(table))
    lines = causal_seeds_table([read_record(tmp_path / "seed0.json"), read_record(folder / "seed1/table.json")])
    assert lines.splitlines()[2] == ("| zero, all | 1.500 [1.400, 1.600] | 1.500 [1.400, 1.600] | "
                                     "1.500 ± 0.000 [1.500, 1.500] |")
