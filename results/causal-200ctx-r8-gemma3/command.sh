#!/bin/bash
# Experiment H2 (issue 11): the causal ablation table on Gemma-3-270M layer 9 with 200 CE contexts (25k+ predictions).
# SAEs: the demo's (make demo: batchtopk m2048 k32, residual encoder, centred scaffold, 1.2M tokens) plus uncentred
# hybrids (scaffold on x) trained on the demo's own cache with the same budget and seed.
# Held-out text: 320 contexts of 128 tokens; CE on the first 200, means / PCA / donors fitted on the other 120.
set -euo pipefail
PY=${PY:-.venv/bin/python}
R=runs/H2
mkdir -p $R
# 1. the uncentred hybrid, r = 8, on the demo cache (skipped when already trained)
[ -d $R/uncentred-saes/batchtopk_m2048_k32_r8_resin_uncentred ] || \
$PY -m scaffold_sae train --cache runs/demo/cache --out $R/uncentred-saes --arch batchtopk --width 2048 --k 32 \
    --ranks 8 --encoder-input residual --scaffold-centred false --tokens 1228800 --batch-size 4096 --seed 0 \
    --no-progress
# 2. one run directory per hybrid (the baseline plus that hybrid), sharing the demo's study_config.json
link() {  # link NAME SAE_DIR
    mkdir -p $R/$1/saes && cp runs/demo/study_config.json $R/$1/
    ln -sfn $PWD/runs/demo/saes/batchtopk_m2048_k32_r0_resin $R/$1/saes/
    ln -sfn $PWD/$2 $R/$1/saes/
}
link c8 runs/demo/saes/batchtopk_m2048_k32_r8_resin
link u8 $R/uncentred-saes/batchtopk_m2048_k32_r8_resin_uncentred
T="$PY results/causal-removal-readings-gemma3/run_table.py --ce-contexts 200 --eval-tokens 40960 --fit-tokens 8192 --bootstrap 2000"
OUT=results/causal-200ctx-r8-gemma3
# 3. r = 8, centred: the scaffold term and the top-8 PCs under zero / mean / resample, at ordinary positions and at
#    all positions (12 conditions + clean). span(U)'s projector, random bases and splices: the demo and H have them at
#    fewer contexts (span(U) within 1% of the scaffold term there); at 200 contexts they did not fit the session's CPU
#    budget (blocks 10-17 and the 262k-token head run at ~170 tokens/s on 2 cores: ~2 min per condition).
$T --run $R/c8 --out $OUT/c8 --subjects scaffold,pca --operators zero,mean,resample --positions ordinary,all \
    --splices false
# 4. r = 8, uncentred scaffold (on x): scaffold term vs top-8 PCs zeroed, at ordinary positions and at all positions
#    (4 conditions + clean; the mean operator, x1.18 in H at 20 contexts, did not fit the session's CPU budget)
$T --run $R/u8 --out $OUT/u8 --subjects scaffold,pca --operators zero --positions ordinary,all --splices false
