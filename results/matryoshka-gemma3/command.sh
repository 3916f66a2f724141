#!/bin/bash
# Experiment M (issue 12, item 5): Matryoshka-BatchTopK in the study, on the demo's cache, with the same analyses.
set -euo pipefail
PY=${PY:-.venv/bin/python}
$PY -m scaffold_sae study --config results/configs/gemma-L9-matryoshka.yaml --cache-dir runs/demo/cache \
    --out runs/M --no-progress
cp runs/M/report/results.json runs/M/report/report.md results/matryoshka-gemma3/
