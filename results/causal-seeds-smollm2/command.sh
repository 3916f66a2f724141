#!/bin/bash
# Experiment H14 (issues 11 and 12): H4's SmolLM2-135M layer 15 causal readings over training seeds. Seed 0 is H4's
# (its tables are H4's c24 / u8 / u24). Centred r = 24: experiment N's seeds 1 and 2 (same cache, batches and budget
# as H4's study; N's seed 0 is H4's SAE bit for bit). Uncentred r = 8 and 24: trained here with `train --seed 1 / 2`
# (a different initialisation and batch order) and H4's settings. Protocol as H4: 200 CE contexts = 25,200
# predictions, top-r PCs fitted on 120 other contexts, paired bootstrap over contexts (2,000 resamples); the scaffold
# term and the top-r PCs zeroed (r = 8: ordinary and all positions; r = 24: all positions, as in H4).
# Needs H4's study (its cache and plain SAE) and N's SAEs: run H4's and N's command.sh first.
set -euo pipefail
PY=${PY:-.venv/bin/python}
R=runs/H14
OUT=results/causal-seeds-smollm2
F="--no-progress --analyse structure ablation_table --eval-tokens 40960 --analyses.tokens 8192 \
--analyses.ce_tokens 25600 --harvest.ce_tokens 25600 --harvest.batch_size 4 --analyses.bootstrap_samples 2000 \
--analyses.redundancy.redundancy_points 6 --analyses.probing.probe_docs 0 \
--analyses.ablation_table.ablation_subjects scaffold,pca --analyses.ablation_table.ablation_operators zero \
--analyses.ablation_table.ablation_random_bases 5 --analyses.ablation_table.ablation_splices false"
link() {  # link NAME SAE_DIR: a run folder with H4's plain SAE and one hybrid
    mkdir -p $R/$1/saes && cp runs/H4/study/study_config.json $R/$1/
    ln -sfn $PWD/runs/H4/study/saes/batchtopk_m2304_k32_r0_resin $R/$1/saes/
    ln -sfn $PWD/$2 $R/$1/saes/
}
for s in 1 2; do
    [ -d $R/uncentred-s$s/batchtopk_m2304_k32_r24_resin_uncentred ] || \
    $PY -m scaffold_sae train --cache runs/H4/study/cache --out $R/uncentred-s$s --arch batchtopk --width 2304 --k 32 \
        --ranks 8,24 --encoder-input residual --scaffold-centred false --tokens 1228800 --batch-size 4096 --seed $s \
        --until-converged --heldout-every 20 --no-progress
    link c24-seed$s runs/N/saes/batchtopk_m2304_k32_r24_resin_s$s
    link u8-seed$s $R/uncentred-s$s/batchtopk_m2304_k32_r8_resin_uncentred
    link u24-seed$s $R/uncentred-s$s/batchtopk_m2304_k32_r24_resin_uncentred
    [ -f $OUT/u8-seed$s/table.json ] || $PY -m scaffold_sae analyse $R/u8-seed$s $F \
        --out $OUT/u8-seed$s --analyses.ablation_table.ablation_positions ordinary,all
    for name in c24 u24; do
        [ -f $OUT/$name-seed$s/table.json ] || $PY -m scaffold_sae analyse $R/$name-seed$s $F \
            --out $OUT/$name-seed$s --analyses.ablation_table.ablation_positions all
    done
done
# The reading over seeds (seed 0 = H4's tables): the series in experiments/causal-seeds-smollm2.yaml, drawn into
# results/RESULTS.md by `scaffold-sae experiment report`.
