"""A fixed-probe topic reading over training seeds (scaffold_sae.over_seeds.topic_seeds_table), seed 0 first.

    python results/scripts/topic_seeds.py seed0/table.json seed1/table.json seed2/table.json \
        --condition scaffold:zero:all
"""

import argparse

from scaffold_sae.over_seeds import read_record, topic_seeds_table

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", nargs="+")
    parser.add_argument("--condition", required=True)
    parser.add_argument("--dataset", default="bbc_topic")
    args = parser.parse_args()
    print(topic_seeds_table([read_record(p) for p in args.tables], args.condition, args.dataset))
