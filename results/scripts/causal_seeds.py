"""The scaffold / top-r PCs CE ratio of causal-ablation tables over training seeds, as markdown: each seed's ratio
with its paired bootstrap interval over contexts, then mean +- sd and the 95% t-interval over seeds, per (operator,
positions) comparison of the scaffold against the PCs.

    python results/scripts/causal_seeds.py results/causal-200ctx-smollm2/u8/table.json \
        results/causal-seeds-smollm2/u8-seed1/table.json results/causal-seeds-smollm2/u8-seed2/table.json
"""

import json
import sys

from seeds_table import seeds_table


def ratios(path: str) -> dict[tuple[str, str], dict]:
    table = json.load(open(path))["analyses"]["ablation_table"]
    out = {}
    for c in table["comparisons"]:
        (subject, operator), (against, other) = c["numerator"].split(":"), c["denominator"].split(":")
        if subject == "scaffold" and against == "pca" and operator == other:
            out[(operator, c["positions"])] = c["ce_ratio"]
    return out


def main(paths: list[str]) -> None:
    per_seed = [ratios(p) for p in paths]
    keys = [k for k in per_seed[0] if all(k in seed for seed in per_seed)]
    print(seeds_table("operator, positions", {f"{k[0]}, {k[1]}": [seed[k] for seed in per_seed] for k in keys}))


if __name__ == "__main__":
    main(sys.argv[1:])
