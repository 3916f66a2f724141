#!/bin/bash
# Experiment H16 (issues 11 and 12): H3's reading at the paper's r = 24 over training seeds: the uncentred r = 24
# scaffold term zeroed at all positions (x - U V^T x) against the top-24 PCs zeroed. Seed 0 is H3's u24; this trains
# seeds 1 and 2 (`train --seed`: a different initialisation and batch order) with H3's settings on the demo's cache,
# then runs H3's protocol (200 CE contexts = 25,200 predictions; PCs fitted on 120 other contexts; paired bootstrap
# over contexts, 2,000 resamples). Needs the demo's cache (make demo) and O's plain SAE (the demo's, seed 0).
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=results/causal-uncentred-r24-seeds-gemma3
for s in 1 2; do
    R=runs/H16/seed$s
    compgen -G "$R/trained/*r24*" >/dev/null || \
    $PY -m scaffold_sae train --cache runs/demo/cache --out $R/trained --arch batchtopk --width 2048 --k 32 \
        --ranks 24 --encoder-input residual --scaffold-centred false --tokens 1228800 --batch-size 4096 --seed $s \
        --no-progress
    mkdir -p $R/saes && cp runs/O/study_config.json $R/
    ln -sfn $PWD/runs/O/saes/batchtopk_m2048_k32_r0_resin_s0 $R/saes/
    for d in $R/trained/*r24*; do ln -sfn $PWD/$d $R/saes/; done
    [ -f $OUT/seed$s/table.json ] || $PY results/causal-removal-readings-gemma3/run_table.py --run $R --out $OUT/seed$s \
        --analyses ablation_table --ce-contexts 200 --eval-tokens 40960 --fit-tokens 8192 --bootstrap 2000 \
        --subjects scaffold,pca --operators zero --positions all --splices false
done
$PY results/scripts/causal_seeds.py results/causal-200ctx-grid-gemma3/u24/table.json $OUT/seed1/table.json \
    $OUT/seed2/table.json | tee $OUT/over-seeds.md
