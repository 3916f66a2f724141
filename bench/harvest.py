"""Harvest throughput vs a plain full forward pass, on the same text, for each embedded model.

    python bench/harvest.py [--batches 1] [--repeats 3] [--threads 1] [--out results/bench_harvest.json]

Harvest is timed end to end (corpus reading, tokenising, the truncated forward, exclusions, shard writing and
checksums) and its rate counts every input token it processed; the baseline times only the full model's
forward passes (logits included) over exactly the same contexts. One untimed warm-up round, then `repeats`
interleaved rounds; the fastest round of each counts (the CPU may be shared). Target: harvest >= 1.8x.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from scaffold_sae.cache import harvest
from scaffold_sae.corpus import load_corpus, pack_contexts, resolve_bos
from scaffold_sae.models import load_model

MODELS = (("smollm2-135m", 15), ("gemma3-270m", 9))
TARGET = 1.8


@torch.inference_mode()
def full_forward_seconds(lm, contexts: torch.Tensor, batch_size: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(contexts), batch_size):
        lm.hf_model(input_ids=contexts[i:i + batch_size].to(lm.device), use_cache=False).logits.sum().item()
    return time.perf_counter() - start


def bench_model(key: str, layer: int, batches: int, batch_size: int, ctx_len: int, repeats: int) -> dict:
    lm = load_model(key)
    n_tokens = int(batches * batch_size * ctx_len * 0.95)  # exclusions are ~1%: exactly `batches` batches
    harvest_times, full_times = [], []
    for repeat in range(repeats + 1):  # round 0 warms both paths up on the real shapes and is not counted
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            cache = harvest(lm, layer, "news", n_tokens if repeat else batch_size * ctx_len // 2, out,
                            ctx_len=ctx_len, batch_size=batch_size, progress=False)
            seconds = time.perf_counter() - start
            n_contexts, kept = cache.manifest["n_contexts"], cache.n_rows
        contexts = pack_contexts(lm.tokenizer, load_corpus("news"), ctx_len, n_contexts * ctx_len, "train",
                                 seed=0, bos_id=resolve_bos(lm.tokenizer, lm.bos_token_id))
        full = full_forward_seconds(lm, contexts, batch_size)
        if repeat:
            harvest_times.append(seconds)
            full_times.append(full)
    tokens = n_contexts * ctx_len
    harvest_s, full_s = min(harvest_times), min(full_times)
    return {"model": key, "layer": layer, "n_layers": lm.n_layers, "d_model": lm.d_model, "contexts": n_contexts,
            "tokens": tokens, "kept_rows": kept, "harvest_s": [round(t, 2) for t in harvest_times],
            "full_forward_s": [round(t, 2) for t in full_times], "harvest_tok_s": round(tokens / harvest_s, 1),
            "full_forward_tok_s": round(tokens / full_s, 1), "speedup": round(full_s / harvest_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=1, help="forward batches per measurement")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ctx-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the fastest of each counts")
    parser.add_argument("--models", default=",".join(f"{k}:{l}" for k, l in MODELS), help="key:layer,...")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0: torch's default); 1 is steadiest on a shared CPU")
    parser.add_argument("--out", default="results/bench_harvest.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for item in args.models.split(","):
        key, layer = item.rsplit(":", 1)
        rows.append(bench_model(key, int(layer), args.batches, args.batch_size, args.ctx_len, args.repeats))
        print(f"{key}: done", flush=True)
    header = f"{'model':<14} {'layer':>5} {'tokens':>7} {'harvest tok/s':>14} {'full fwd tok/s':>15} {'speedup':>8}"
    print(header)
    for r in rows:
        print(f"{r['model']:<14} {r['layer']:>5} {r['tokens']:>7} {r['harvest_tok_s']:>14} "
              f"{r['full_forward_tok_s']:>15} {r['speedup']:>7}x")
    result = {"target_speedup": TARGET, "met": all(r["speedup"] >= TARGET for r in rows), "rows": rows,
              "device": "cpu", "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "batches": args.batches, "repeats": args.repeats, "batch_size": args.batch_size, "ctx_len": args.ctx_len, "dtype": "float32",
              "note": "CPU shared with other jobs while measured: fastest of `repeats` interleaved rounds "
                      "after a warm-up round; compare the two columns of one row, not across runs"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
