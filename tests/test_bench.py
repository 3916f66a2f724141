"""Every script in bench/ runs at a tiny size, and no implementation row fails (benchmarks cannot rot)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "train.py": ["--d", "16", "--widths", "64", "--k", "4", "--rank", "2", "--batch", "64", "--steps", "1"],
    "distributed.py": ["--d", "16", "--m", "64", "--k", "4", "--rank", "2", "--batch", "64", "--steps", "2",
                       "--warmup", "1", "--rows", "2048", "--timeout", "120"],
    "harvest.py": ["--batches", "1", "--batch-size", "1", "--ctx-len", "16", "--repeats", "1",
                   "--models", "smollm2-135m:1"],
    "stress_distributed.py": ["--rounds", "1", "--hog", "0"],
    "ablation_cost.py": ["--model", "smollm2-135m", "--layer", "15", "--contexts", "2", "--ctx-len", "16",
                         "--conditions", "1", "--threads", "1"],
}
SLOW = {"harvest.py", "stress_distributed.py", "ablation_cost.py"}  # an embedded model / a pytest round: minutes, not seconds


def test_every_bench_script_has_a_tiny_setting():
    scripts = {p.name for p in (ROOT / "bench").glob("*.py")}
    assert scripts == set(TINY), f"add a tiny setting for {sorted(scripts ^ set(TINY))} to TINY"


@pytest.mark.parametrize("script", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name
                                    for name in TINY])
def test_bench_script_runs_at_a_tiny_size(script, tmp_path):
    out = tmp_path / "out.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *TINY[script], "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    result = json.loads(out.read_text())
    if script == "stress_distributed.py":
        assert result["failed_rounds"] == 0, text[-3000:]
        return
    assert " failed" not in proc.stdout, text[-3000:]
    assert result["rows"], text[-3000:]
    if script == "train.py":
        impls = {row["impl"] for row in result["rows"]}
        assert {"naive", "ours"} <= impls
        # sparsify (the `bench` extra) is optional: its row is skipped, and the output says so, only when missing
        assert "sparsify" in impls or "sparsify: not installed, skipped" in proc.stdout
