#!/bin/bash
# Experiment J (issue 12, item 2): is the scaffold the top PCs when nothing puts it there? The demo's study (Gemma-3-270M
# layer 9, batchtopk m2048 k32, residual encoder, 1.2M tokens) with the scaffold initialised as a random orthonormal
# basis, r = 8 and 24, 3 seeds, on the demo's cache. Then the structure analysis on every SAE (8,192 held-out tokens):
# all r principal angles to the top-r PCs, the variance of x in span(U) vs in the top-r PCs, the massive dims' share.
set -euo pipefail
PY=${PY:-.venv/bin/python}
R=runs/J
OUT=results/random-scaffold-init-gemma3
[ -f $R/report/results.json ] || $PY -m scaffold_sae study --config results/configs/gemma-L9-random-scaffold.yaml \
    --cache-dir runs/demo/cache --out $R --no-progress
cp $R/report/results.json $R/report/report.md $OUT/
[ -f $OUT/structure/table.json ] || $PY results/causal-removal-readings-gemma3/run_table.py --run $R --out $OUT/structure \
    --analyses structure --fit-tokens 8192 --ce-contexts 8
# the demo's PCA-initialised hybrids (seed 0), same statistic, for comparison
[ -f $OUT/structure-pca-init/table.json ] || $PY results/causal-removal-readings-gemma3/run_table.py --run runs/demo \
    --out $OUT/structure-pca-init --analyses structure --fit-tokens 8192 --ce-contexts 8
