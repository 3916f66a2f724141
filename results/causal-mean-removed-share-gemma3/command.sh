#!/bin/bash
# Experiment H12 (issue 11): what each zero-type removal takes away from the activation mean, Gemma-3-270M layer 9 (the
# geometry behind H2 / H3 / H8 / H9). The demo's centred r = 8 and r = 24 hybrids (K3 seed 0) and the uncentred r = 8
# hybrids of H9 (seeds 1 and 2), against the top-r PCs of the same 20,000 cached tokens. Runs after H9's command.sh.
set -euo pipefail
PY=${PY:-.venv/bin/python}
$PY results/scripts/mean_removed.py --cache runs/demo/cache --out results/causal-mean-removed-share-gemma3/table.json \
    "centred r = 8=runs/K3/saes/batchtopk_m2048_k32_r8_resin_s0" \
    "centred r = 24=runs/K3/saes/batchtopk_m2048_k32_r24_resin_s0" \
    "uncentred r = 8, seed 1=runs/H9/seed1/trained/batchtopk_m2048_k32_r8_resin_uncentred" \
    "uncentred r = 8, seed 2=runs/H9/seed2/trained/batchtopk_m2048_k32_r8_resin_uncentred" \
    | tee results/causal-mean-removed-share-gemma3/table.md
