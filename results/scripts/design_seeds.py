"""Per-seed dense-latent counts, FVU and CE score of SAEs from several studies' results.json, with mean ± sd over
seeds and paired differences (same seed index) with their 95% t-interval over seeds.

    python results/scripts/design_seeds.py --seeds 3 \
        "plain=results/analyses-seeds-gemma3/results.json:batchtopk_m2048_k32_r0_resin_s{s}" \
        "free=results/analyses-seeds-gemma3/results.json:batchtopk_m2048_k32_r8_resin_s{s}" \
        --pairs free-plain
"""

from __future__ import annotations

import argparse
import json

from scaffold_sae.claims import t_interval

METRICS = {"dense >10%": "dense_10", "FVU": "fvu", "CE score (zero)": "ce_score_zero", "dead": "dead"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("saes", nargs="+", help="LABEL=RESULTS_JSON:SAE_NAME with {s} for the seed index")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pairs", default="", help="comma-separated A-B label pairs: per-seed A minus B")
    args = parser.parse_args()
    values = {}
    for spec in args.saes:
        label, rest = spec.split("=", 1)
        path, name = rest.rsplit(":", 1)
        saes = json.loads(open(path).read())["saes"]
        values[label] = {m: [float(saes[name.format(s=s)][key]) for s in range(args.seeds)] for m, key in METRICS.items()}

    def cell(v: list[float]) -> str:
        mean, sd, low, high = t_interval(v)
        return f"{mean:.4g} ± {sd:.2g} [{low:.4g}, {high:.4g}]"

    print("| SAE | " + " | ".join(f"{m}: per seed; mean ± sd [95% t-interval]" for m in METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    for label, per in values.items():
        print(f"| {label} | " + " | ".join(", ".join(f"{x:.4g}" for x in v) + "; " + cell(v)
                                         for v in per.values()) + " |")
    for pair in [p for p in args.pairs.split(",") if p]:
        a, b = pair.split("-")
        print(f"| {a} - {b} (paired by seed) | " + " | ".join(
            ", ".join(f"{x - y:.4g}" for x, y in zip(values[a][m], values[b][m])) + "; "
            + cell([x - y for x, y in zip(values[a][m], values[b][m])]) for m in METRICS) + " |")


if __name__ == "__main__":
    main()
