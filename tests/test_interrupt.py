"""Ctrl-C / SIGTERM during `train` before the first checkpoint interval: a checkpoint is written at the step
boundary (atomically), and rerunning the same command resumes to the weights of an uninterrupted run."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from scaffold_sae.cache import harvest
from scaffold_sae.checkpoint import CHECKPOINT, open_checkpoint
from scaffold_sae.cli import main
from scaffold_sae.saving import load_sae

# Runs `scaffold-sae ARGS` and sends itself SIGNAL once faults.progress reports step AT.
RUNNER = textwrap.dedent("""
    import os, signal, sys
    from scaffold_sae import faults, cli
    at, sig = int(sys.argv[1]), getattr(signal, sys.argv[2])
    real = faults.progress
    def progress(what, count):
        real(what, count)
        if what == "step" and count == at:
            os.kill(os.getpid(), sig)
    faults.progress = progress
    cli.main(sys.argv[3:])
""")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, tiny_lm, tiny_corpus) -> Path:
    out = tmp_path_factory.mktemp("cache") / "c"
    harvest(tiny_lm, 1, str(tiny_corpus), 1200, out, ctx_len=32, progress=False)
    return out


def train_argv(cache: Path, out: Path) -> list[str]:  # the default checkpoint interval (500) exceeds the 12 steps
    return ["train", "--cache", str(cache), "--out", str(out), "--arch", "batchtopk", "--width", "128", "--k", "8",
            "--ranks", "0,4", "--tokens", str(256 * 12), "--batch-size", "256", "--no-progress"]


def sae_tensors(out: Path) -> dict:
    return {(d.name, k): v for d in sorted(p for p in out.iterdir() if p.is_dir())
            for k, v in load_sae(d).state_dict().items()}


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupt_before_the_first_checkpoint_interval_saves_the_step_and_resumes(cache_dir, tmp_path, sig):
    out = tmp_path / "interrupted"
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    result = subprocess.run([sys.executable, str(script), "5", sig, *train_argv(cache_dir, out)],
                            capture_output=True, text=True, timeout=1800)  # a guard against a hang only
    signum = getattr(signal, sig)
    assert result.returncode == 128 + signum, result.stderr[-2000:]
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: interrupted at step 5 ({sig}); rerun the same command to resume"]
    assert (out / CHECKPOINT).exists() and not [p for p in out.iterdir() if p.is_dir()]
    assert not list(out.glob(".*.tmp"))
    payload = torch.load(io.BytesIO(open_checkpoint(out / CHECKPOINT)), weights_only=False)
    assert payload["step"] == 5  # the step boundary where the signal arrived

    main(train_argv(cache_dir, out))  # the rerun resumes from step 5
    main(train_argv(cache_dir, tmp_path / "straight"))
    a, b = sae_tensors(out), sae_tensors(tmp_path / "straight")
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not (out / CHECKPOINT).exists()
