#!/bin/bash
# Experiment H11 (issue 11 item 5): the fixed-probe topic analysis with paired differences (scaffold zeroed minus the
# top-r PCs zeroed, and minus r random directions zeroed, on the same test documents) at 1,000 documents per dataset
# (700 fit the probes, 300 test; BBC topic and language ID), read at layer L, L+3 and the last block.
# 1. SmolLM2-135M layer 15, H4's centred r = 24 hybrid (H6 left scaffold vs PCs undecided at 150 test documents).
# 2. Gemma-3-270M layer 9, the demo's centred r = 24 hybrid (= K3's seed 0; H7 ran the uncentred one).
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=results/topic-paired-vs-pcs
T="$PY results/causal-removal-readings-gemma3/run_table.py --analyses topic_ablation --ce-contexts 200 --eval-tokens 40960
   --fit-tokens 8192 --bootstrap 2000 --topic-docs 1000 --topic-operators zero --topic-positions ordinary,all"
[ -f runs/H4/study/report/results.json ] || $PY -m scaffold_sae study --config results/configs/smollm2-L15-causal.yaml \
    --out runs/H4/study --no-progress
R=runs/H11/smollm2-c24; mkdir -p $R/saes && cp runs/H4/study/study_config.json $R/
for q in 0 24; do ln -sfn $PWD/runs/H4/study/saes/batchtopk_m2304_k32_r${q}_resin $R/saes/; done
[ -f $OUT/smollm2-c24/table.json ] || $T --run $R --out $OUT/smollm2-c24
R=runs/H11/gemma-c24; mkdir -p $R/saes && cp runs/K3/study_config.json $R/
for q in 0 24; do ln -sfn $PWD/runs/K3/saes/batchtopk_m2048_k32_r${q}_resin_s0 $R/saes/; done
[ -f $OUT/gemma-c24/table.json ] || $T --run $R --out $OUT/gemma-c24
