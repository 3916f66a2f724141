#!/bin/bash
# Experiment K3 (issue 12, items 3 and 6): sparse probing with power (experiment K's protocol) for 3 training seeds of
# each SAE; see results/configs/gemma-L9-probing-seeds.yaml. Needs the demo's cache (make demo, or the study below
# harvests it). Then results/scripts/probing_seeds.py gathers hybrid - plain per seed: mean ± sd and a t-interval.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=results/probing-seeds-gemma3
$PY -m scaffold_sae study --config results/configs/gemma-L9-probing-seeds.yaml --cache-dir runs/demo/cache \
    --out runs/K3 --no-progress
cp runs/K3/report/results.json runs/K3/report/report.md $OUT/
for s in 0 1 2; do
    R=runs/K3/seed$s
    mkdir -p $R/saes && cp runs/K3/study_config.json $R/
    for r in 0 8 24; do ln -sfn $PWD/runs/K3/saes/batchtopk_m2048_k32_r${r}_resin_s$s $R/saes/; done
    [ -f $OUT/seed$s/table.json ] || $PY results/causal-removal-readings-gemma3/run_table.py --run $R --out $OUT/seed$s \
        --analyses probing --probe-docs 1000 --ce-contexts 8 --bootstrap 2000
done
$PY results/scripts/probing_seeds.py $OUT/seed*/table.json | tee $OUT/summary.md
