"""Training throughput in one run: our step vs sparsify (if installed) vs a naive dense loop, end-to-end `train`
from a disk cache, and a 7-SAE lockstep sweep batched vs 7 sequential one-SAE steps.

    python bench/train.py                                   # CPU, d=576, m=4608, k=32, batch 4096, rank 24
    python bench/train.py --device cuda --d 2304 --widths 65536 --k 64
    python bench/train.py --widths 4608 --steps 3 --parts step    # only the step rows

Each measurement runs in its own subprocess so that peak memory (ru_maxrss) is its own.  Prints tokens/s
(median step after warm-up), peak memory and, for every step row, the host-device syncs one steady-state step
makes on the GPU's path (scaffold_sae.syncs.SyncRecorder, which runs kernels.device_path; on a CPU the timed
steps read the host instead, which costs nothing there: the `ours-device-path` row times the GPU's path on a CPU).
Writes everything as JSON (--out).  sparsify is the `bench` extra: its row is skipped, saying so, when missing.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def naive_step_fn(d: int, m: int, k: int, rank: int, batch: int, device: str = "cpu", compile: bool = False):
    """The plain dense loop: dense codes, flat batch top-k, dense decoder, autograd everywhere."""
    import torch

    g = torch.Generator().manual_seed(0)
    w_dec = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(m, d, generator=g), dim=1).to(device))
    w_enc = torch.nn.Parameter(w_dec.detach().t().clone())
    b_enc = torch.nn.Parameter(torch.zeros(m, device=device))
    b_dec = torch.nn.Parameter(torch.zeros(d, device=device))
    u = torch.nn.Parameter(torch.linalg.qr(torch.randn(d, rank, generator=g))[0].to(device))
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


def ours_step_fn(d: int, m: int, k: int, rank: int, batch: int, device: str = "cpu", compile: bool = False,
                 fast: bool = True, device_path: bool = False):
    """Our trainer's step (scaffold_sae.step.train_step), one SAE; AuxK's pool as a run far from dead latents.
    ``device_path`` runs the GPU's fixed-shape selection on a CPU too (the CPU's default reads the host)."""
    import contextlib

    import torch

    from scaffold_sae import kernels

    from scaffold_sae.comm import LocalComm
    from scaffold_sae.sae import HybridSAE, SAEConfig
    from scaffold_sae.step import new_state, refresh_dead_pool, train_step
    from scaffold_sae.trainer import TrainConfig

    sae = HybridSAE(SAEConfig(arch="batchtopk", d_in=d, width=m, k=k, rank=rank), torch.Generator().manual_seed(0))
    cfg = TrainConfig(tokens=10**9, batch_size=batch, fast=fast, compile=compile, lr=1e-4)
    state = new_state("bench", sae.to(device), cfg, torch.device(device))
    refresh_dead_pool(state, 10**9, batch, 50)
    comm = LocalComm(device)

    def step(x):
        with kernels.device_path() if device_path else contextlib.nullcontext():
            train_step(state, x, 1.0, 10**9, cfg, comm)
    return step


def sparsify_step_fn(d: int, m: int, k: int, rank: int, batch: int, device: str = "cpu", compile: bool = False):
    import torch
    from sparsify import SaeConfig, SparseCoder  # type: ignore

    sae = SparseCoder(d, SaeConfig(num_latents=m, k=k), device=device, dtype=torch.float32)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)

    def step(x):
        opt.zero_grad()
        out = sae(x)
        out.fvu.backward()
        opt.step()
    return step


def lockstep_fn(d: int, m: int, k: int, rank: int, batch: int, device: str = "cpu", compile: bool = False,
                batched: bool = True, n: int = 7):
    """A rank sweep of n SAEs (ranks spread over 0..rank): one stacked step (scaffold_sae.batched) or n one-SAE
    steps in sequence (what `train` does per step today)."""
    import torch

    from scaffold_sae.batched import StackedSAEs, StackedTrainer
    from scaffold_sae.comm import LocalComm
    from scaffold_sae.sae import HybridSAE, SAEConfig
    from scaffold_sae.step import new_state, refresh_dead_pool, train_step
    from scaffold_sae.trainer import TrainConfig

    ranks = sorted({round(rank * i / (n - 1)) for i in range(n)}) if n > 1 else [rank]
    ranks += [rank] * (n - len(ranks))
    saes = [HybridSAE(SAEConfig(arch="batchtopk", d_in=d, width=m, k=k, rank=r), torch.Generator().manual_seed(i))
            .to(device) for i, r in enumerate(ranks)]
    if batched:
        trainer = StackedTrainer(StackedSAEs(saes), lr=1e-4)
        return lambda x: trainer.step(x, 1.0)
    cfg = TrainConfig(tokens=10**9, batch_size=batch, lr=1e-4)
    states = [new_state(f"s{i}", sae, cfg, torch.device(device)) for i, sae in enumerate(saes)]
    for st in states:
        refresh_dead_pool(st, 10**9, batch, 50)
    comm = LocalComm(device)

    def step(x):
        for st in states:
            train_step(st, x, 1.0, 10**9, cfg, comm)
    return step


IMPLS = {"naive": naive_step_fn, "ours": ours_step_fn,
         "ours-dense": lambda *a, **kw: ours_step_fn(*a, **kw, fast=False),
         "ours-device-path": lambda *a, **kw: ours_step_fn(*a, **kw, device_path=True),
         "sparsify": sparsify_step_fn,
         "lockstep-batched": lockstep_fn,
         "lockstep-sequential": lambda *a, **kw: lockstep_fn(*a, **kw, batched=False)}
STEP_IMPLS = ("naive", "ours", "ours-dense", "ours-device-path", "sparsify")
OPTIONAL = {"sparsify": "sparsify", "saelens": "sae_lens", "dictionary_learning": "dictionary_learning"}


def _sync(device: str) -> None:
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def worker(impl: str, d: int, m: int, k: int, rank: int, batch: int, steps: int, device: str = "cpu",
           compile: bool = False) -> dict:
    import torch

    from scaffold_sae.syncs import SyncRecorder

    step = IMPLS[impl](d, m, k, rank, batch, device=device, compile=compile)
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(d, d, generator=g) / d ** 0.5
    xs = [(torch.randn(batch, d, generator=g) @ mix * 3 + 1.0).to(device) for _ in range(2)]
    for i in range(2):  # warm-up (and compilation, when asked)
        step(xs[i % 2])
    with SyncRecorder() as recorder:
        step(xs[0])
    _sync(device)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        step(xs[i % 2])
        _sync(device)
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"impl": impl, "width": m, "tok_s": batch / sec, "step_ms": 1000 * sec, "peak_mb": peak,
            "syncs_per_step": len(recorder.events), "syncs": recorder.summary().splitlines()[:10],
            # the recorder runs the GPU's path (kernels.device_path); the timed CPU steps read the host unless asked
            "selection": "fixed-shapes" if device != "cpu" or impl == "ours-device-path" else "host-read",
            # importing scaffold_sae sets PASSIVE (before torch starts its threads); the naive loop does not import it
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")}


def end_to_end(d: int, m: int, k: int, rank: int, batch: int, steps: int, device: str) -> dict:
    """`train` (the library call behind the CLI) from a disk cache harvested from a tiny random Llama of width d:
    wall time with start-up, and the steady-state rate of its steps (the bare step is the `ours` row)."""
    import tempfile

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import make_texts, make_tokenizer
    from scaffold_sae.cache import ActivationCache, harvest
    from scaffold_sae.models import from_hf_model
    from scaffold_sae.sae import SAEConfig
    from scaffold_sae.trainer import TrainConfig, train_saes

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=2, eos_token_id=3, pad_token_id=1)
    lm = from_hf_model(LlamaForCausalLM(config).eval(), make_tokenizer(), spec="tiny-llama")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp, "docs.txt")
        corpus.write_text("\n\n".join(make_texts(2000)) + "\n")
        rows = batch * (steps + 3) + 8192
        harvest(lm, 1, str(corpus), rows, Path(tmp, "cache"), ctx_len=64, progress=False)
        cache = ActivationCache.open(Path(tmp, "cache"))
        stamps: list[float] = []
        # dead_tokens as the bare step's (no AuxK): a run this short would otherwise count every latent dead
        cfg = TrainConfig(tokens=batch * (steps + 3), batch_size=batch, progress=False, checkpoint_every=0,
                          init_sample_tokens=4096, threshold_sample_tokens=4096, device=device, dead_tokens=10**9)
        start = time.perf_counter()
        train_saes(cache, [SAEConfig(arch="batchtopk", width=m, k=k, rank=rank)], cfg, Path(tmp, "out"),
                   on_step=lambda step, states: stamps.append(time.perf_counter()))
        wall = time.perf_counter() - start
    steady = statistics.median(b - a for a, b in zip(stamps[2:], stamps[3:]))
    return {"impl": "end-to-end", "width": m, "tok_s": batch / steady, "step_ms": 1000 * steady,
            "wall_s": wall, "startup_s": wall - (stamps[-1] - stamps[0]) - steady,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--d", type=int, default=576)
    parser.add_argument("--widths", default="4608", help="comma-separated dictionary widths m")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--rank", type=int, default=24, help="scaffold rank r (the sweep spreads 0..r)")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row (median)")
    parser.add_argument("--impls", default="naive,ours", help="step rows; sparsify is added when installed")
    parser.add_argument("--parts", default="step,lockstep,e2e", help="which measurements: step, lockstep, e2e")
    parser.add_argument("--sweep", type=int, default=7, help="SAEs in the lockstep sweep")
    parser.add_argument("--compile", action="store_true", help="TrainConfig.compile for our step rows")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in each worker")
    parser.add_argument("--passive", action="store_true",
                        help="OMP_WAIT_POLICY=PASSIVE in the workers (helps a lot on an oversubscribed CPU)")
    parser.add_argument("--out", default="results/bench_train.json", help="where the figures go as JSON")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import torch
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.device.startswith("cuda"):
            torch.backends.cuda.matmul.allow_tf32 = True
        width = int(args.widths)
        if args.worker == "end-to-end":
            result = end_to_end(args.d, width, args.k, args.rank, args.batch, args.steps, args.device)
        else:
            if args.worker.startswith("lockstep"):
                IMPLS[args.worker] = functools.partial(IMPLS[args.worker], n=args.sweep)
            result = worker(args.worker, args.d, width, args.k, args.rank, args.batch, args.steps, args.device,
                            args.compile)
        print(json.dumps(result))
        return
    parts = set(args.parts.split(","))
    impls = args.impls.split(",") if "step" in parts else []
    notes = []
    for name, module in OPTIONAL.items():
        if "step" not in parts:
            break
        if importlib.util.find_spec(module) is None:
            notes.append(f"{name}: not installed, skipped" + (" (pip install 'scaffold-sae[bench]')"
                                                             if name == "sparsify" else ""))
        elif name in IMPLS and name not in impls:
            impls.append(name)
        elif name not in IMPLS:
            notes.append(f"{name}: installed but no adapter here, skipped")
    if "lockstep" in parts:
        impls += ["lockstep-batched", "lockstep-sequential"]
    if "e2e" in parts:
        impls.append("end-to-end")
    env = dict(os.environ, **({"OMP_WAIT_POLICY": "PASSIVE"} if args.passive else {}))
    load_before = os.getloadavg()
    for note in notes:
        print(f"# {note}")
    print(f"# device {args.device}; d={args.d} k={args.k} rank={args.rank} batch={args.batch} fp32, median of "
          f"{args.steps} steps, threads={args.threads or 'default'}, load average {load_before[0]:.1f} on "
          f"{os.cpu_count()} cores")
    print(f"{'impl':<20} {'width':>6} {'tokens/s':>10} {'step ms':>9} {'peak MB':>8} {'syncs/step':>10}")
    rows, failed = [], []
    for width in args.widths.split(","):
        for impl in impls:
            cmd = [sys.executable, __file__, "--worker", impl, "--device", args.device, "--d", str(args.d),
                   "--widths", width, "--k", str(args.k), "--rank", str(args.rank), "--batch", str(args.batch),
                   "--steps", str(args.steps), "--sweep", str(args.sweep)]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            cmd += ["--compile"] if args.compile and impl.startswith("ours") else []
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"{impl:<20} {width:>6} failed: {proc.stderr.strip().splitlines()[-1:]}")
                failed.append(f"{impl} width {width}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            syncs = r.get("syncs_per_step", "-")
            print(f"{impl:<20} {width:>6} {r['tok_s']:>10.0f} {r['step_ms']:>9.0f} {r['peak_mb']:>8.0f} {syncs:>10}",
                  flush=True)
            rows.append({**r, "impl": impl, "width": int(width)})
    ratios = _ratios(rows)
    for name, value in ratios.items():
        print(f"# {name}: {value:.2f}x")
    setting = {"device": args.device, "d": args.d, "k": args.k, "rank": args.rank, "batch": args.batch,
               "steps": args.steps, "sweep": args.sweep, "compile": args.compile, "threads": args.threads,
               "omp_wait_policy": env.get("OMP_WAIT_POLICY", "default")}
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
               "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    if args.device.startswith("cuda"):
        try:
            import torch
            machine["gpu"] = torch.cuda.get_device_name()
        except Exception as error:  # noqa: BLE001 - the rows already say what failed
            machine["gpu"] = f"unknown ({type(error).__name__})"
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump({"setting": setting, "machine": machine, "rows": rows, "ratios": ratios, "notes": notes,
                   "failed": failed}, handle, indent=1)
    if failed:
        sys.exit(f"failed rows: {', '.join(failed)}")


def _ratios(rows: list[dict]) -> dict[str, float]:
    """The ratios the targets are stated in (issue 30), per width, from the rows of this one run."""
    out = {}
    for width in sorted({r["width"] for r in rows}):
        rate = {r["impl"]: r["tok_s"] for r in rows if r["width"] == width}
        if "ours" in rate:
            for other in ("sparsify", "naive"):
                if other in rate:
                    out[f"ours / {other} (m={width})"] = rate["ours"] / rate[other]
            if "end-to-end" in rate:
                out[f"end-to-end / bare step (m={width})"] = rate["end-to-end"] / rate["ours"]
        if "lockstep-batched" in rate and "lockstep-sequential" in rate:
            out[f"lockstep batched / sequential (m={width})"] = rate["lockstep-batched"] / rate["lockstep-sequential"]
    return out


if __name__ == "__main__":
    main()
