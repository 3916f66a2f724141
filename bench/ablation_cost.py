"""Cost of one causal-ablation condition from the cached layer: the clean pass alone, then with N conditions, on
C held-out contexts of T tokens, wall and process-CPU seconds (on a shared machine the CPU seconds are the figure to
trust). Used to size the demo (issue 27, item 8).

    PYTHONPATH=src python bench/ablation_cost.py --model gemma3-270m --layer 9 --contexts 32 --conditions 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from scaffold_sae.corpus import load_corpus, pack_contexts
from scaffold_sae.lm_passes import condition_losses
from scaffold_sae.models import load_model
from scaffold_sae.sae import random_orthonormal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--layer", type=int, default=9)
    parser.add_argument("--contexts", type=int, default=32)
    parser.add_argument("--ctx-len", type=int, default=128)
    parser.add_argument("--conditions", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="", help="also write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    ids = pack_contexts(lm.tokenizer, load_corpus("news"), args.ctx_len, args.contexts * args.ctx_len,
                        split="heldout", seed=0, bos_id=lm.bos_token_id)
    q = random_orthonormal(lm.d_model, 8, torch.Generator().manual_seed(0))
    seconds = {}
    for k in (0, args.conditions):
        wall, cpu = time.perf_counter(), time.process_time()
        condition_losses(lm, args.layer, ids, {f"c{i}": (lambda r, o, i: r - (r @ q) @ q.t()) for i in range(k)},
                         batch_size=4, rows_per_forward=8)
        seconds[k] = (time.perf_counter() - wall, time.process_time() - cpu)
        print(f"{ids.shape[0]} contexts, clean + {k} conditions: wall {seconds[k][0]:.1f} s, cpu {seconds[k][1]:.1f} s",
              flush=True)
    k = args.conditions
    load = open("/proc/loadavg").read().split()[0]
    per_wall, per_cpu = (seconds[k][0] - seconds[0][0]) / k, (seconds[k][1] - seconds[0][1]) / k
    print(f"per condition: wall {per_wall:.1f} s, cpu {per_cpu:.1f} s ({args.threads} threads, load average {load})")
    if args.out:
        rows = [{"conditions": n, "contexts": int(ids.shape[0]), "wall_s": w, "cpu_s": c} for n, (w, c) in
                seconds.items()]
        Path(args.out).write_text(json.dumps({"model": args.model, "layer": args.layer, "ctx_len": args.ctx_len,
                                              "threads": args.threads, "load_average": float(load), "rows": rows,
                                              "per_condition_wall_s": per_wall, "per_condition_cpu_s": per_cpu},
                                             indent=1) + "\n")


if __name__ == "__main__":
    main()
