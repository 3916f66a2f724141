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
    [ -f $OUT/seed$s/table.json ] || $PY -m scaffold_sae analyse $R --out $OUT/seed$s --no-progress \
        --analyse ablation_table --eval-tokens 40960 --analyses.tokens 8192 --analyses.ce_tokens 25600 \
        --harvest.ce_tokens 25600 --harvest.batch_size 4 --analyses.bootstrap_samples 2000 \
        --analyses.redundancy.redundancy_points 6 --analyses.probing.probe_docs 0 \
        --analyses.ablation_table.ablation_subjects scaffold,pca --analyses.ablation_table.ablation_operators zero \
        --analyses.ablation_table.ablation_random_bases 5 --analyses.ablation_table.ablation_splices false \
        --analyses.ablation_table.ablation_positions all
done
# The reading over seeds (seed 0 = H3's table): the series in experiments/causal-uncentred-r24-seeds-gemma3.yaml, drawn into
# results/RESULTS.md by `scaffold-sae experiment report`.
