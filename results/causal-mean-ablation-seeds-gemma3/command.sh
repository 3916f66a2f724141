#!/bin/bash
# Experiment H19 (issues 11 and 12): the mean-ablation causal readings over training seeds. H2's protocol (200 CE
# contexts = 25,200 predictions, means / PCs fitted on 120 other contexts, paired bootstrap over contexts, 2,000
# resamples) for the centred r = 8 hybrid of training seeds 1 and 2 (O's SAEs: the demo's settings; seed 0 is the
# demo's SAE, whose mean readings are H2's c8): the scaffold and the top-8 PCs mean-replaced, x - A (x - mu_class),
# at ordinary and at all positions. Needs O's SAEs (results/analyses-seeds-gemma3/command.sh).
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=results/causal-mean-ablation-seeds-gemma3
for s in 1 2; do
    R=runs/H19/seed$s
    mkdir -p $R/saes && cp runs/O/study_config.json $R/
    for r in 0 8; do ln -sfn "$(readlink -f runs/O/saes/batchtopk_m2048_k32_r${r}_resin_s$s)" $R/saes/; done
    [ -f $OUT/seed$s/table.json ] || $PY results/causal-removal-readings-gemma3/run_table.py --run $R --out $OUT/seed$s \
        --analyses ablation_table --ce-contexts 200 --eval-tokens 40960 --fit-tokens 8192 --bootstrap 2000 \
        --subjects scaffold,pca --operators mean --positions ordinary,all --splices false
done
$PY results/scripts/causal_seeds.py results/causal-200ctx-r8-gemma3/c8/table.json $OUT/seed1/table.json \
    $OUT/seed2/table.json | tee $OUT/over-seeds.md
