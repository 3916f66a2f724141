#!/bin/bash
# Experiment O (issue 12, item 3): the analyses on all 3 seeds in one study; see
# results/configs/gemma-L9-analysis-seeds.yaml. Shares the demo's cache (make demo, or the study harvests it).
# Seed 0's SAEs are the demo's bit for bit (lockstep equals separate training, tests/test_trainer.py), so when
# runs/demo (or runs/G0) has them they are linked instead of retrained.
set -euo pipefail
PY=${PY:-.venv/bin/python}
R=runs/O
OUT=results/analyses-seeds-gemma3
mkdir -p $R/saes
for r in 0 8 24; do
    for d in runs/demo runs/G0; do
        src=$d/saes/batchtopk_m2048_k32_r${r}_resin
        if [ -f $src/scaffold_sae.json ] && [ ! -e $R/saes/batchtopk_m2048_k32_r${r}_resin_s0 ]; then
            ln -sfn $PWD/$src $R/saes/batchtopk_m2048_k32_r${r}_resin_s0
        fi
    done
done
$PY -m scaffold_sae study --config results/configs/gemma-L9-analysis-seeds.yaml --cache-dir runs/demo/cache \
    --out $R --no-progress
cp $R/report/results.json $R/report/report.md $OUT/
