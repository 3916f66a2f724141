"""The scaffold / top-r PCs CE ratio of causal-ablation tables over training seeds (scaffold_sae.over_seeds), seed 0
first; a path of a run folded into its experiment's summary.json is read from there.

    python results/scripts/causal_seeds.py results/causal-200ctx-smollm2/u8/table.json \
        results/causal-seeds-smollm2/u8-seed1/table.json results/causal-seeds-smollm2/u8-seed2/table.json
"""

import sys

from scaffold_sae.over_seeds import causal_seeds_table, read_record

if __name__ == "__main__":
    print(causal_seeds_table([read_record(p) for p in sys.argv[1:]]))
