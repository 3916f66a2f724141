"""Per-seed dense-latent counts, FVU and CE score of SAEs from several studies, with mean ± sd over seeds and paired
differences (same seed index) with their 95% t-interval over seeds (scaffold_sae.over_seeds.design_seeds_table).

    python results/scripts/design_seeds.py --seeds 3 \
        "plain=results/analyses-seeds-gemma3/results.json:batchtopk_m2048_k32_r0_resin_s{s}" \
        "free=results/analyses-seeds-gemma3/results.json:batchtopk_m2048_k32_r8_resin_s{s}" \
        --pairs free-plain
"""

import argparse

from scaffold_sae.over_seeds import design_seeds_table, design_values, read_record

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("saes", nargs="+", help="LABEL=RESULTS_JSON:SAE_NAME with {s} for the seed index")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pairs", default="", help="comma-separated A-B label pairs: per-seed A minus B")
    args = parser.parse_args()
    values = {}
    for spec in args.saes:
        label, rest = spec.split("=", 1)
        path, name = rest.rsplit(":", 1)
        values[label] = design_values(read_record(path), name, args.seeds)
    pairs = [tuple(p.split("-")) for p in args.pairs.split(",") if p]
    print(design_seeds_table(values, pairs))
