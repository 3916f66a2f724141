"""The redundancy readings of several training seeds (one analyses.json of run_table.py per seed, seed 0 first), as
markdown: at the paper's share of the dictionary, the CE ratio (x clean CE) with the plain SAE's most span(U)-aligned
latents ablated, with as many density-matched random latents ablated, and with the scaffold removed under the same
operator; then aligned - scaffold and aligned - random. Each seed's difference carries the bounds of its two
(unpaired) bootstrap intervals, low_a - high_b and high_a - low_b, wider than a paired interval; the last column is
mean ± sd and the 95% t-interval over seeds.

    python results/scripts/redundancy_seeds.py --label gemma3-L9-r8 results/redundancy-200ctx-gemma3/analyses.json \
        results/redundancy-seeds/gemma-seed1/analyses.json results/redundancy-seeds/gemma-seed2/analyses.json
"""

import argparse
import json

from seeds_table import seeds_table


def difference(a: dict, b: dict) -> dict:
    return {"value": a["value"] - b["value"], "low": a["low"] - b["high"], "high": a["high"] - b["low"]}


def readings(path: str) -> tuple[dict[str, dict], str]:
    result = json.load(open(path))["results"]["redundancy"]
    paper = {p["operator"]: p for p in result["curve"] if p["paper_share"]}
    rows, n = {}, None
    for op, point in paper.items():
        n = point["n"]
        scaffold = result["scaffold_removed"][op]
        rows[f"{op}: aligned"] = point["aligned"]
        rows[f"{op}: random (density-matched)"] = point["random"]
        rows[f"{op}: scaffold removed"] = scaffold
        rows[f"{op}: aligned - scaffold"] = difference(point["aligned"], scaffold)
        rows[f"{op}: aligned - random"] = difference(point["aligned"], point["random"])
    return rows, (f"N = {n} (the paper's share), {result['n_aligned']} above the alignment "
                  f"threshold ({result['dense_aligned']} of {result['dense_latents']} dense), "
                  f"{result['curve_contexts']} contexts")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="redundancy", help="heading of the table")
    parser.add_argument("paths", nargs="+", help="analyses.json per seed, seed 0 first")
    args = parser.parse_args()
    per_seed = [readings(p) for p in args.paths]
    keys = [k for k in per_seed[0][0] if all(k in rows for rows, _ in per_seed)]
    print(f"## {args.label}\n")
    for i, (_, sizes) in enumerate(per_seed):
        print(f"- seed {i}: {sizes}")
    print()
    print(seeds_table("operator: latents ablated (x clean CE)", {k: [rows[k] for rows, _ in per_seed] for k in keys}))
    print()


if __name__ == "__main__":
    main()
