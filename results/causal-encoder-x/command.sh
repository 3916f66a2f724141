#!/bin/bash
# Experiment H13 (issue 11, "both encoder inputs"): H2's causal reading for hybrids whose sparse encoder sees x (the
# paper's "in parallel" design) instead of the residual x - scaffold(x). Centred hybrids with encoder_input x, trained
# on the same caches, budgets and seed as their residual-encoder twins:
#   x8, x24:   Gemma-3-270M layer 9, r = 8 and 24, the demo's cache and budget (1.23M tokens); plain SAE = K3's seed 0;
#   smol-x24:  SmolLM2-135M layer 15, r = 24, H4's cache and budget (until converged, at most 1.23M tokens).
# H2's protocol: 200 CE contexts = 25,200 predictions, PCs fitted on 120 other contexts, paired bootstrap over
# contexts. Subjects: the scaffold map zeroed (x - U V^T x) and the top-r PCs zeroed, at ordinary and at all
# positions. Needs the demo's cache (make demo), K3's seed-0 SAEs and H4's study (runs/H4/study).
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=results/causal-encoder-x
table() {  # run dir, out name
    [ -f $OUT/$2/table.json ] || $PY results/causal-removal-readings-gemma3/run_table.py --run $1 --out $OUT/$2 \
        --analyses ablation_table --ce-contexts 200 --eval-tokens 40960 --fit-tokens 8192 --bootstrap 2000 \
        --subjects scaffold,pca --operators zero --positions ordinary,all --splices false
}
for r in 8 24; do
    R=runs/H13/x$r
    compgen -G "$R/trained/*r${r}*" >/dev/null || \
    $PY -m scaffold_sae train --cache runs/demo/cache --out $R/trained --arch batchtopk --width 2048 --k 32 \
        --ranks $r --encoder-input x --tokens 1228800 --batch-size 4096 --no-progress
    mkdir -p $R/saes && cp runs/K3/study_config.json $R/
    ln -sfn $PWD/runs/K3/saes/batchtopk_m2048_k32_r0_resin_s0 $R/saes/
    for d in $R/trained/*r${r}*; do ln -sfn $PWD/$d $R/saes/; done
    table $R x$r
done
R=runs/H13/smol-x24
compgen -G "$R/trained/*r24*" >/dev/null || \
$PY -m scaffold_sae train --cache runs/H4/study/cache --out $R/trained --arch batchtopk --width 2304 --k 32 \
    --ranks 24 --encoder-input x --tokens 1228800 --batch-size 4096 --until-converged --heldout-every 20 --no-progress
mkdir -p $R/saes && cp runs/H4/study/study_config.json $R/
ln -sfn $PWD/runs/H4/study/saes/batchtopk_m2304_k32_r0_resin $R/saes/
for d in $R/trained/*r24*; do ln -sfn $PWD/$d $R/saes/; done
table $R smol-x24
