"""The redundancy readings of several training seeds at the paper's share of the dictionary
(scaffold_sae.over_seeds.redundancy_seeds_table), seed 0 first.

    python results/scripts/redundancy_seeds.py --label gemma3-L9-r8 results/redundancy-200ctx-gemma3/analyses.json \
        results/redundancy-seeds/gemma-seed1/analyses.json results/redundancy-seeds/gemma-seed2/analyses.json
"""

import argparse

from scaffold_sae.over_seeds import read_record, redundancy_seeds_table

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="redundancy", help="heading of the table")
    parser.add_argument("paths", nargs="+", help="analyses.json (or table.json) per seed, seed 0 first")
    args = parser.parse_args()
    print(redundancy_seeds_table([read_record(p) for p in args.paths], args.label))
