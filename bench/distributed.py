"""Data-parallel training throughput: 1 process vs N processes (gloo, CPU), same global batch.

    python bench/distributed.py                      # d=576, m=4608, k=32, BatchTopK r=24, global batch 4096
    python bench/distributed.py --steps 12 --nprocs 1,2

Each configuration runs the real trainer (train_saes with a Comm for N > 1) in spawned processes on the
same synthetic activations; tokens/s is measured from per-step timestamps after warm-up (init, the
geometric median and PCA are excluded).  With N processes each gets cpu_count // N torch threads.
Also times one gradient all-reduce of the SAE's parameters.  Writes results/bench_distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]


def _rank(rank: int, world: int, init_file: str, result_file: str, opts: dict) -> None:
    from scaffold_sae import distributed
    from scaffold_sae.sae import SAEConfig
    from scaffold_sae.trainer import TensorSource, TrainConfig, train_saes

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    d, m, k, rank_r = opts["d"], opts["m"], opts["k"], opts["rank"]
    g = torch.Generator().manual_seed(0)
    n = opts["rows"]
    data = torch.randn(n, d, generator=g) @ (torch.randn(d, d, generator=g) / d**0.5) + 1.0
    source = TensorSource(data)
    per_rank = opts["batch"] // world
    steps = opts["warmup"] + opts["steps"]
    cfg = TrainConfig(tokens=steps * opts["batch"], batch_size=per_rank, progress=False, checkpoint_every=0,
                      init_sample_tokens=4096, threshold_sample_tokens=4096, log_every=10**6, lr=1e-4)
    sae_cfgs = [SAEConfig(arch="batchtopk", width=m, k=k, rank=rank_r)]
    stamps: list[float] = []
    comm = distributed.init(rank, world, f"file://{init_file}", "cpu", timeout_s=600) if world > 1 else None
    out = tempfile.mkdtemp(prefix="bench_dist_")
    train_saes(source, sae_cfgs, cfg, out, comm=comm,
               on_step=lambda step, states: stamps.append(time.perf_counter()))
    allreduce_ms = None
    if comm is not None:
        import torch.distributed as dist

        bucket = torch.randn(2 * m * d + m + d + 2 * d * rank_r)
        times = []
        for _ in range(5):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(bucket)
            times.append(time.perf_counter() - t0)
        allreduce_ms = 1000 * statistics.median(times)
        distributed.shutdown()
    if rank == 0:
        measured = stamps[opts["warmup"]:]
        elapsed = measured[-1] - stamps[opts["warmup"] - 1]
        step_s = [b - a for a, b in zip(stamps[opts["warmup"] - 1:], measured)]
        Path(result_file).write_text(json.dumps({
            "processes": world, "threads_per_process": torch.get_num_threads(), "batch_per_rank": per_rank,
            "steps_measured": len(measured), "tokens_per_s": len(measured) * opts["batch"] / elapsed,
            "median_step_s": statistics.median(step_s), "allreduce_ms": allreduce_ms,
            "allreduce_mb": (2 * m * d + m + d + 2 * d * rank_r) * 4 / 2**20}))


def run(world: int, opts: dict) -> dict:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        init_file, result_file = os.path.join(tmp, "init"), os.path.join(tmp, "result.json")
        procs = [ctx.Process(target=_rank, args=(r, world, init_file, result_file, opts)) for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(opts["timeout"])
        for p in procs:
            if p.is_alive():
                p.kill()
        codes = [p.exitcode for p in procs]
        if codes != [0] * world or not os.path.exists(result_file):
            raise SystemExit(f"benchmark with {world} processes failed (exit codes {codes})")
        return json.loads(Path(result_file).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=576)
    parser.add_argument("--m", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--rank", type=int, default=24, help="scaffold rank r")
    parser.add_argument("--batch", type=int, default=4096, help="global tokens per step")
    parser.add_argument("--steps", type=int, default=15, help="measured steps")
    parser.add_argument("--warmup", type=int, default=3, help="steps before timing")
    parser.add_argument("--nprocs", default="1,2", help="process counts to compare")
    parser.add_argument("--rows", type=int, default=65536, help="synthetic activations held per process")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--out", default=str(ROOT / "results" / "bench_distributed.json"))
    args = parser.parse_args()
    opts = {k: getattr(args, k) for k in ("d", "m", "k", "rank", "batch", "steps", "warmup", "rows", "timeout")}
    load_before = os.getloadavg()
    rows = []
    for world in (int(x) for x in args.nprocs.split(",")):
        row = run(world, opts)
        rows.append(row)
        print(f"processes {row['processes']}  threads/proc {row['threads_per_process']}  "
              f"batch/rank {row['batch_per_rank']:5d}  {row['tokens_per_s']:9,.0f} tok/s  "
              f"step {row['median_step_s'] * 1000:7.1f} ms"
              + (f"  all-reduce {row['allreduce_mb']:.1f} MB: {row['allreduce_ms']:.1f} ms" if row["allreduce_ms"]
                 else ""), flush=True)
    result = {
        "setting": {**{k: opts[k] for k in ("d", "m", "k", "rank", "batch", "steps", "warmup")},
                    "arch": "batchtopk", "backend": "gloo", "device": "cpu"},
        "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__, "platform": sys.platform,
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                    "note": "2 CPU cores shared with other concurrently running jobs; numbers are noisy"},
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
