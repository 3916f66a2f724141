#!/bin/bash
# Experiment H3 (issue 11): the rest of the causal ablation grid at 200 CE contexts (25,200 predictions), on
# Gemma-3-270M layer 9 with the demo's SAEs (make demo: batchtopk m2048 k32, residual encoder, 1.2M tokens, seed 0)
# and uncentred hybrids trained on the demo's cache with the same budget and seed. Same protocol as H2: 320 held-out
# contexts of 128 tokens, CE on the first 200, means / PCA / donors fitted on the other 120, paired bootstrap over
# CE contexts (2,000 resamples).
#   1. the paper's r = 24, both encoder inputs: scaffold term vs top-24 PCs, zero and mean, all positions;
#   2. r = 8 uncentred: the mean and resample operators (H2 ran zero only);
#   3. r = 8 centred: the projector onto span(U), 5 random 8-dim bases, and the two splices (zero, all positions).
# Runs after H2 (command in ../causal-200ctx-r8-gemma3/command.sh), whose run directories it reuses.
set -euo pipefail
PY=${PY:-.venv/bin/python}
R=runs/H2
OUT=results/causal-200ctx-grid-gemma3
[ -d $R/uncentred-saes-r24/batchtopk_m2048_k32_r24_resin_uncentred ] || \
$PY -m scaffold_sae train --cache runs/demo/cache --out $R/uncentred-saes-r24 --arch batchtopk --width 2048 --k 32 \
    --ranks 24 --encoder-input residual --scaffold-centred false --tokens 1228800 --batch-size 4096 --seed 0 \
    --no-progress
link() {  # link NAME SAE_DIR
    mkdir -p $R/$1/saes && cp runs/demo/study_config.json $R/$1/
    ln -sfn $PWD/runs/demo/saes/batchtopk_m2048_k32_r0_resin $R/$1/saes/
    ln -sfn $PWD/$2 $R/$1/saes/
}
link c24 runs/demo/saes/batchtopk_m2048_k32_r24_resin
link u24 $R/uncentred-saes-r24/batchtopk_m2048_k32_r24_resin_uncentred
T="$PY results/causal-removal-readings-gemma3/run_table.py --ce-contexts 200 --eval-tokens 40960 --fit-tokens 8192 --bootstrap 2000"
[ -f $OUT/c24/table.json ] || $T --run $R/c24 --out $OUT/c24 --subjects scaffold,pca --operators zero,mean --positions all --splices false
[ -f $OUT/u24/table.json ] || $T --run $R/u24 --out $OUT/u24 --subjects scaffold,pca --operators zero,mean --positions all --splices false
[ -f $OUT/u8/table.json ] || $T --run $R/u8 --out $OUT/u8 --subjects scaffold --operators mean,resample --positions all --splices false
[ -f $OUT/c8/table.json ] || $T --run $R/c8 --out $OUT/c8 --subjects span_u,random --operators zero --positions all --random-bases 5 --splices true
