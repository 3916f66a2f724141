#!/bin/bash
# Experiment H4 (issue 11): the causal ablation table on SmolLM2-135M layer 15 at 200 CE contexts (25,200
# predictions), both scaffold inputs (centred: on x - b_dec, as the study trains it; uncentred: on x), r = 8 and 24.
# Protocol as H2: 320 held-out contexts of 128 tokens, CE on the first 200, means / PCA / donors fitted on the other
# 120, paired bootstrap over CE contexts (2,000 resamples).
set -euo pipefail
PY=${PY:-.venv/bin/python}
R=runs/H4
OUT=results/causal-200ctx-smollm2
# 1. the study: cache, plain SAE and centred hybrids (r = 8, 24), evaluation
[ -f $R/study/report/results.json ] || $PY -m scaffold_sae study --config results/configs/smollm2-L15-causal.yaml \
    --out $R/study --no-progress
# 2. uncentred hybrids on the same cache, same budget and seed
[ -d $R/uncentred-saes/batchtopk_m2304_k32_r24_resin_uncentred ] || \
$PY -m scaffold_sae train --cache $R/study/cache --out $R/uncentred-saes --arch batchtopk --width 2304 --k 32 \
    --ranks 8,24 --encoder-input residual --scaffold-centred false --tokens 1228800 --batch-size 4096 --seed 0 \
    --until-converged --heldout-every 20 \
    --no-progress
link() {  # link NAME SAE_DIR
    mkdir -p $R/$1/saes && cp $R/study/study_config.json $R/$1/
    ln -sfn $PWD/$R/study/saes/batchtopk_m2304_k32_r0_resin $R/$1/saes/
    ln -sfn $PWD/$2 $R/$1/saes/
}
for r in 8 24; do
    link c$r $R/study/saes/batchtopk_m2304_k32_r${r}_resin
    link u$r $R/uncentred-saes/batchtopk_m2304_k32_r${r}_resin_uncentred
done
T="$PY results/causal-removal-readings-gemma3/run_table.py --ce-contexts 200 --eval-tokens 40960 --fit-tokens 8192 --bootstrap 2000"
# 3. r = 8: scaffold term vs top-8 PCs, zero and mean, ordinary positions and all positions
for s in c8 u8; do
    [ -f $OUT/$s/table.json ] || $T --run $R/$s --out $OUT/$s --subjects scaffold,pca --operators zero,mean \
        --positions ordinary,all --splices false
done
# 4. r = 24: the same at all positions
for s in c24 u24; do
    [ -f $OUT/$s/table.json ] || $T --run $R/$s --out $OUT/$s --subjects scaffold,pca --operators zero,mean \
        --positions all --splices false
done
