#!/bin/bash
# Experiment H9 (issues 11 and 12): the one reading that gave the paper's ratio (uncentred r = 8 scaffold term zeroed,
# x - U V^T x, vs the top-8 PCs zeroed) over training seeds. Seed 0 is H2's u8; this trains seeds 1 and 2 (`train
# --seed`: a different initialisation and batch order) with H2's settings on the demo's cache, then runs H2's
# protocol (200 CE contexts = 25,200 predictions; PCs fitted on 120 other contexts; paired bootstrap over contexts).
# Needs the demo's cache (make demo).
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=results/causal-uncentred-r8-seeds-gemma3
for s in 1 2; do
    R=runs/H9/seed$s
    compgen -G "$R/trained/*r8*" >/dev/null || \
    $PY -m scaffold_sae train --cache runs/demo/cache --out $R/trained --arch batchtopk --width 2048 --k 32 \
        --ranks 8 --encoder-input residual --scaffold-centred false --tokens 1228800 --batch-size 4096 --seed $s \
        --no-progress
    mkdir -p $R/saes && cp runs/K3/study_config.json $R/
    ln -sfn $PWD/runs/K3/saes/batchtopk_m2048_k32_r0_resin_s0 $R/saes/
    for d in $R/trained/*r8*; do ln -sfn $PWD/$d $R/saes/; done
    [ -f $OUT/seed$s/table.json ] || $PY -m scaffold_sae analyse $R --out $OUT/seed$s --no-progress \
        --analyse ablation_table --eval-tokens 40960 --analyses.tokens 8192 --analyses.ce_tokens 25600 \
        --harvest.ce_tokens 25600 --harvest.batch_size 4 --analyses.bootstrap_samples 2000 \
        --analyses.redundancy.redundancy_points 6 --analyses.probing.probe_docs 0 \
        --analyses.ablation_table.ablation_subjects scaffold,pca --analyses.ablation_table.ablation_operators zero \
        --analyses.ablation_table.ablation_random_bases 5 --analyses.ablation_table.ablation_splices false \
        --analyses.ablation_table.ablation_positions ordinary,all
done
