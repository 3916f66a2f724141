#!/bin/bash
# Experiment H8 (issue 11): the causal ratio over training seeds. H2's protocol (200 CE contexts = 25,200 predictions,
# means / PCs fitted on 120 other contexts, paired bootstrap over contexts) for the centred r = 8 hybrid and plain SAE
# of training seeds 1 and 2 (experiment K3's SAEs: the demo's settings, seeds 1 and 2; seed 0 is the demo's SAE bit
# for bit, whose numbers are H2's c8). The scaffold term and the top-8 PCs zeroed, at ordinary and at all positions.
# Runs after results/probing-seeds-gemma3/command.sh.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=results/causal-centred-r8-seeds-gemma3
for s in 1 2; do
    R=runs/H8/seed$s
    mkdir -p $R/saes && cp runs/K3/study_config.json $R/
    for r in 0 8; do ln -sfn $PWD/runs/K3/saes/batchtopk_m2048_k32_r${r}_resin_s$s $R/saes/; done
    [ -f $OUT/seed$s/table.json ] || $PY results/causal-removal-readings-gemma3/run_table.py --run $R --out $OUT/seed$s \
        --analyses ablation_table --ce-contexts 200 --eval-tokens 40960 --fit-tokens 8192 --bootstrap 2000 \
        --subjects scaffold,pca --operators zero --positions ordinary,all --splices false
done
