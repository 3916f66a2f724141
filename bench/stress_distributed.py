"""Stress the multi-process paths: N rounds of the distributed tests and a 2-process `train`, CPU hog beside.

    python bench/stress_distributed.py                 # 30 rounds, one busy process per core beside them
    python bench/stress_distributed.py --rounds 5 --hog 0

Each round runs (a) the two distributed tests that once aborted at teardown (pytest, a fresh interpreter) and
(b) `scaffold-sae train --nproc 2` on a small real cache harvested once from a tiny random Llama. A round
fails when either exits non-zero or prints "terminate called" / "Aborted" / "core dumped". Prints a line per
round and the count, and writes results/stress_distributed.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_distributed.py", "-k", "two_ranks_equal or dead_latent_counters"]
ABORT_MARKS = ("terminate called", "Aborted", "core dumped", "SIGABRT")


def _spin() -> None:
    while True:
        pass


def _small_cache(root: Path) -> Path:
    """A real on-disk cache from a tiny random Llama (built from a config, no download)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import make_hf_model, make_texts, make_tokenizer
    from scaffold_sae.cache import harvest
    from scaffold_sae.models import from_hf_model

    corpus = root / "docs.txt"
    corpus.write_text("\n\n".join(make_texts()) + "\n")
    lm = from_hf_model(make_hf_model(), make_tokenizer(), spec="tiny-llama")
    harvest(lm, 1, str(corpus), 4000, root / "cache", ctx_len=32, progress=False)
    return root / "cache"


def _run(cmd: list[str], env: dict) -> tuple[bool, str]:
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    text = result.stdout + result.stderr
    ok = result.returncode == 0 and not any(mark in text for mark in ABORT_MARKS)
    return ok, "" if ok else f"exit {result.returncode}: " + " | ".join(text.strip().splitlines()[-3:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--hog", type=int, default=os.cpu_count() or 2, help="busy processes beside the runs")
    parser.add_argument("--out", default=str(ROOT / "results" / "stress_distributed.json"))
    args = parser.parse_args()

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    hogs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.hog)]
    for hog in hogs:
        hog.start()
    failures = {"tests": [], "train": []}
    start = time.time()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cache = _small_cache(Path(tmp))
            for i in range(args.rounds):
                ok_tests, why_tests = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
                                           env)
                out = Path(tmp) / f"train{i}"
                ok_train, why_train = _run([sys.executable, "-m", "scaffold_sae", "train", "--nproc", "2", "--cache",
                                            str(cache), "--out", str(out), "--width", "128", "--k", "8", "--ranks",
                                            "0,4", "--tokens", "20480", "--batch-size", "512", "--no-progress"], env)
                if not ok_tests:
                    failures["tests"].append({"round": i, "why": why_tests})
                if not ok_train:
                    failures["train"].append({"round": i, "why": why_train})
                elapsed = time.time() - start
                print(f"round {i + 1}/{args.rounds}: tests {'ok' if ok_tests else 'FAILED ' + why_tests}; "
                      f"train --nproc 2 {'ok' if ok_train else 'FAILED ' + why_train} "
                      f"({elapsed / (i + 1):.0f} s/round, ETA {elapsed / (i + 1) * (args.rounds - i - 1):.0f} s)",
                      flush=True)
    finally:
        for hog in hogs:
            hog.terminate()
    failed_rounds = len({f["round"] for f in failures["tests"] + failures["train"]})
    summary = {"rounds": args.rounds, "hog_processes": args.hog, "cpu_count": os.cpu_count(),
               "failed_rounds": failed_rounds, "test_failures": len(failures["tests"]),
               "train_failures": len(failures["train"]), "failures": failures,
               "seconds": round(time.time() - start, 1), "date": time.strftime("%Y-%m-%d")}
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"failed: {failed_rounds} of {args.rounds} rounds (tests {len(failures['tests'])}, "
          f"train {len(failures['train'])}); {args.out}")
    sys.exit(1 if failed_rounds else 0)


if __name__ == "__main__":
    main()
