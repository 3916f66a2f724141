#!/bin/bash
# Experiment P (issue 12, item 3): the design checks E (tied vs free scaffold) and F (k = 64) over 3 seeds, on the
# demo's cache (make demo, or the studies harvest it). Two studies: configs/gemma-L9-k64-seeds.yaml and
# configs/gemma-L9-tied-seeds.yaml; the free r = 8 hybrids they are compared with are experiment O's (same cache,
# batches and initialisation seeds). Then results/scripts/design_seeds.py prints the per-seed comparison.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=results/design-seeds-gemma3
for name in k64 tied; do
    $PY -m scaffold_sae study --config results/configs/gemma-L9-$name-seeds.yaml --cache-dir runs/demo/cache \
        --out runs/P/$name --no-progress
    mkdir -p $OUT/$name && cp runs/P/$name/report/results.json runs/P/$name/report/report.md $OUT/$name/
done
