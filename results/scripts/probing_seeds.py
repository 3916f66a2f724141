"""Gather the probing analysis of several training seeds (one run_table.py table.json per seed) into mean ± sd over
seeds and a t-interval of each hybrid's paired difference from the plain SAE of its own seed.

    python results/scripts/probing_seeds.py results/probing-seeds-gemma3/seed*/table.json

Per seed, the difference is the analysis's own: accuracy of the hybrid minus the plain SAE on the same test documents,
averaged over its splits (its bootstrap interval covers test documents). Over seeds: mean ± sample sd and a 95%
t-interval (df = seeds - 1), which covers SAE training.
"""

import json
import sys

import numpy as np

from scaffold_sae.claims import t_interval


def over_seeds(values: list[float]) -> str:
    if len(values) < 2:
        return f"{np.mean(values):+.3f} (one seed)"
    mean, sd, low, high = t_interval(values)
    return f"{mean:+.3f} ± {sd:.3f} [{low:+.3f}, {high:+.3f}]"


def main(paths: list[str]) -> None:
    tables = [json.load(open(p))["analyses"]["probing"] for p in paths]
    keys = sorted({(row["rank"], row["k"], row["dataset"]) for row in tables[0]["paired"]})
    print(f"{len(tables)} seeds ({', '.join(paths)})\n")
    print("Hybrid minus plain SAE (k-sparse probing accuracy), mean ± sd over seeds [95% t-interval]; per seed: the "
          "difference [paired bootstrap 95% over test documents]\n")
    print("| r | k | dataset | over seeds | per seed |\n|---|---|---|---|---|")
    for rank, k, dataset in keys:
        rows = [next(r for r in tab["paired"] if (r["rank"], r["k"], r["dataset"]) == (rank, k, dataset))
                for tab in tables]
        per_seed = ", ".join(f"{r['difference']['value']:+.3f} [{r['difference']['low']:+.3f}, "
                             f"{r['difference']['high']:+.3f}]" for r in rows)
        print(f"| {rank} | {k} | {dataset} | {over_seeds([r['difference']['value'] for r in rows])} | {per_seed} |")
    print("\nAccuracy at k = 5 (mean of the datasets' split means), per seed and mean ± sd over seeds\n")
    ranks = sorted({row["rank"] for row in tables[0]["sparse"]}, key=lambda r: -1 if r is None else r)
    print("| features | per seed | mean ± sd |\n|---|---|---|")
    for rank in ranks:
        accs = [np.mean([r["accuracy"]["value"] for r in tab["sparse"] if r["rank"] == rank and r["k"] == 5])
                for tab in tables]
        name = "residual dims" if rank is None else "plain SAE" if rank == 0 else f"hybrid r = {rank}"
        sd = np.std(accs, ddof=1) if len(accs) > 1 else 0.0
        print(f"| {name} | {', '.join(f'{a:.3f}' for a in accs)} | {np.mean(accs):.3f} ± {sd:.3f} |")
    tpp_table(tables)


def tpp_table(tables: list[dict]) -> None:
    """TPP (secondary; datasets with >= 3 classes): each SAE's score (mean over splits) per seed, and each hybrid's
    score minus the plain SAE's of the same seed, mean ± sd [95% t-interval] over seeds."""
    keys = sorted({(row["dataset"], row["n_ablated"]) for row in tables[0]["tpp"]})
    if not keys:
        return
    ranks = sorted({row["rank"] for row in tables[0]["tpp"]})
    print("\nTPP (secondary metric): score = target-class accuracy drop - mean drop of the other classes, N latents "
          "zeroed, mean over splits; per seed, then hybrid - plain SAE over seeds\n")
    print("| dataset | N | " + " | ".join("plain SAE" if r == 0 else f"r = {r}" for r in ranks)
          + " | " + " | ".join(f"r = {r} - plain" for r in ranks if r) + " |")
    print("|---|---|" + "---|" * (2 * len(ranks) - 1))
    for dataset, n in keys:
        score = {r: [next(row["score"] for row in tab["tpp"] if (row["dataset"], row["n_ablated"], row["rank"])
                          == (dataset, n, r)) for tab in tables] for r in ranks}
        cells = [", ".join(f"{v:.3f}" for v in score[r]) for r in ranks]
        diffs = [over_seeds(list(np.subtract(score[r], score[0]))) for r in ranks if r]
        print(f"| {dataset} | {n} | " + " | ".join(cells + diffs) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
