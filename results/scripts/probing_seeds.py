"""The probing analysis of several training seeds (scaffold_sae.over_seeds.probing_seeds_table): each hybrid's
paired difference from the plain SAE of its own seed, per seed and over seeds, and TPP.

    python results/scripts/probing_seeds.py results/probing-seeds-gemma3/seed*/table.json
"""

import sys

from scaffold_sae.over_seeds import probing_seeds_table, read_record

if __name__ == "__main__":
    print(probing_seeds_table([read_record(p) for p in sys.argv[1:]], sys.argv[1:]))
