"""Training throughput: our trainer step vs a naive dense PyTorch loop (and other libraries if installed).

    python bench/train.py                       # d=576, m=4608 and 9216, k=32, batch 4096, rank 24
    python bench/train.py --widths 4608 --steps 3

Each (implementation, width) runs in its own subprocess so that peak memory (ru_maxrss) is its own.
Prints tokens/s (median step after warm-up) and peak RSS.  SAELens, dictionary_learning and sparsify
are benchmarked only when importable; they are not dependencies of this project.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def naive_step_fn(d: int, m: int, k: int, rank: int, batch: int):
    """The plain dense loop: dense codes, flat batch top-k, dense decoder, autograd everywhere."""
    import torch

    g = torch.Generator().manual_seed(0)
    w_dec = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(m, d, generator=g), dim=1))
    w_enc = torch.nn.Parameter(w_dec.detach().t().clone())
    b_enc, b_dec = torch.nn.Parameter(torch.zeros(m)), torch.nn.Parameter(torch.zeros(d))
    u = torch.nn.Parameter(torch.linalg.qr(torch.randn(d, rank, generator=g))[0])
    v = torch.nn.Parameter(u.detach().clone())
    params = [w_enc, w_dec, b_enc, b_dec, u, v]
    opt = torch.optim.Adam(params, lr=1e-4)

    def step(x):
        opt.zero_grad()
        xc = x - b_dec
        pre = torch.relu(xc @ w_enc + b_enc)
        flat = pre.flatten()
        top = flat.topk(batch * k, sorted=False)
        codes = torch.zeros_like(flat).scatter(0, top.indices, top.values).view_as(pre)
        x_hat = codes @ w_dec + b_dec + (xc @ v) @ u.t()
        loss = (x_hat - x).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            w_dec.div_(w_dec.norm(dim=1, keepdim=True))
    return step


def ours_step_fn(d: int, m: int, k: int, rank: int, batch: int, fast: bool = True):
    import torch

    from scaffold_sae.sae import HybridSAE, SAEConfig
    from scaffold_sae.comm import LocalComm
    from scaffold_sae.trainer import SAEState, TrainConfig, train_step

    sae = HybridSAE(SAEConfig(arch="batchtopk", d_in=d, width=m, k=k, rank=rank), torch.Generator().manual_seed(0))
    opt = torch.optim.Adam([{"params": sae.dictionary_parameters(), "lr_mult": 1.0},
                            {"params": sae.scaffold_parameters(), "lr_mult": 1.0}], lr=1e-4, fused=True)
    state = SAEState("bench", sae, opt, 1e-4, torch.zeros(m, dtype=torch.long))
    state.reset_window()
    cfg = TrainConfig(tokens=10**9, batch_size=batch, fast=fast)

    def step(x):
        train_step(state, x, 1.0, 10**9, cfg, LocalComm())
    return step


def sparsify_step_fn(d: int, m: int, k: int, rank: int, batch: int):
    import torch
    from sparsify import SaeConfig, SparseCoder  # type: ignore

    sae = SparseCoder(d, SaeConfig(num_latents=m, k=k), device="cpu", dtype=torch.float32)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)

    def step(x):
        opt.zero_grad()
        out = sae(x)
        out.fvu.backward()
        opt.step()
    return step


IMPLS = {"naive": naive_step_fn, "ours": ours_step_fn, "ours-dense": lambda *a: ours_step_fn(*a, fast=False),
         "sparsify": sparsify_step_fn}
OPTIONAL = {"sparsify": "sparsify", "saelens": "sae_lens", "dictionary_learning": "dictionary_learning"}


def worker(impl: str, d: int, m: int, k: int, rank: int, batch: int, steps: int) -> dict:
    import torch

    step = IMPLS[impl](d, m, k, rank, batch)
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(d, d, generator=g) / d ** 0.5
    xs = [torch.randn(batch, d, generator=g) @ mix * 3 + 1.0 for _ in range(2)]
    step(xs[0])  # warm-up
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        step(xs[i % 2])
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return {"impl": impl, "width": m, "tok_s": batch / sec, "step_ms": 1000 * sec,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            # importing scaffold_sae sets PASSIVE (before torch starts its threads); the naive loop does not import it
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d", type=int, default=576)
    parser.add_argument("--widths", default="4608,9216")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--rank", type=int, default=24)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--impls", default="naive,ours")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in each worker")
    parser.add_argument("--passive", action="store_true",
                        help="OMP_WAIT_POLICY=PASSIVE in the workers (helps a lot on an oversubscribed CPU)")
    parser.add_argument("--out", default="results/bench_train.json", help="where the figures go as JSON")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.threads:
            import torch
            torch.set_num_threads(args.threads)
        print(json.dumps(worker(args.worker, args.d, int(args.widths), args.k, args.rank, args.batch, args.steps)))
        return
    impls = args.impls.split(",")
    for name, module in OPTIONAL.items():
        if importlib.util.find_spec(module) is None:
            print(f"# {name}: not installed, skipped")
        elif name in IMPLS and name not in impls:
            impls.append(name)
        elif name not in IMPLS:
            print(f"# {name}: installed but no adapter here, skipped")
    env = dict(os.environ, **({"OMP_WAIT_POLICY": "PASSIVE"} if args.passive else {}))
    print(f"# d={args.d} k={args.k} rank={args.rank} batch={args.batch} fp32, median of {args.steps} steps, "
          f"threads={args.threads or 'default'}, OMP_WAIT_POLICY={env.get('OMP_WAIT_POLICY', 'default')}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'impl':<12} {'width':>6} {'tokens/s':>10} {'step ms':>9} {'peak RSS MB':>12}")
    rows, failed = [], []
    for width in args.widths.split(","):
        for impl in impls:
            cmd = [sys.executable, __file__, "--worker", impl, "--d", str(args.d), "--widths", width,
                   "--k", str(args.k), "--rank", str(args.rank), "--batch", str(args.batch), "--steps", str(args.steps)]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"{impl:<12} {width:>6} failed: {proc.stderr.strip().splitlines()[-1:]}")
                failed.append(f"{impl} width {width}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{impl:<12} {width:>6} {r['tok_s']:>10.0f} {r['step_ms']:>9.0f} {r['peak_rss_mb']:>12.0f}",
                  flush=True)
            rows.append({"impl": impl, "width": int(width), **r})
    setting = {"d": args.d, "k": args.k, "rank": args.rank, "batch": args.batch, "steps": args.steps,
               "threads": args.threads, "omp_wait_policy": env.get("OMP_WAIT_POLICY", "default"),
               "loadavg": os.getloadavg()[0], "cpu_count": os.cpu_count()}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump({"setting": setting, "rows": rows, "failed": failed}, handle, indent=1)
    if failed:
        sys.exit(f"failed rows: {', '.join(failed)}")


if __name__ == "__main__":
    main()
