#!/bin/bash
# Experiment H10 (issue 11): the centred scaffold's own term removed literally, x - U V^T (x - b_dec) (the splice
# "SAE without its scaffold term, error kept"; b_dec's share along span(U) stays), against the top-r PCs zeroed,
# at ordinary positions (H3 has all positions), for the demo's r = 8 hybrid (= experiment K3's seed 0,
# bit for bit). H2's protocol: 200 CE contexts = 25,200 predictions, PCs / means fitted on 120 other contexts.
# The table's "scaffold, zero" cell is a different reading: x - U V^T x, which also removes U V^T b_dec.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=results/causal-centred-term-removed-gemma3
for r in 8; do  # r = 24 was not run (time); add it here to run it
    R=runs/H10/c$r
    mkdir -p $R/saes && cp runs/K3/study_config.json $R/
    for q in 0 $r; do ln -sfn $PWD/runs/K3/saes/batchtopk_m2048_k32_r${q}_resin_s0 $R/saes/; done
    [ -f $OUT/c$r/table.json ] || $PY results/causal-removal-readings-gemma3/run_table.py --run $R --out $OUT/c$r \
        --analyses ablation_table --ce-contexts 200 --eval-tokens 40960 --fit-tokens 8192 --bootstrap 2000 \
        --subjects pca --operators zero --positions ordinary --splices true
done
