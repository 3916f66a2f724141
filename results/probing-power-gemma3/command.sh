#!/bin/bash
# Experiment K (issue 12, item 6): sparse probing with statistical power on Gemma-3-270M layer 9. The demo's SAEs
# (batchtopk m2048 k32, residual encoder, 1.2M tokens, seed 0) at r = 0, 8 and 24, probed on 1,000 documents per
# dataset (BBC topic 200 per topic; Rotten Tomatoes 500 + 500; ParlSpeech 250 per language), 64 tokens each, 5
# stratified 70/30 splits (300 test documents per dataset and split), k = 1, 2, 5, 10, 20, per-token threshold codes,
# a paired bootstrap (2,000 resamples over test documents) of each hybrid minus the plain SAE.
# results/configs/gemma-L9-probing-power.yaml is the same as one study; it would retrain these SAEs bit for bit
# (same cache and seed: see ../demo-agreement), so this run reuses the demo's.
set -euo pipefail
PY=${PY:-.venv/bin/python}
R=runs/K
mkdir -p $R/saes && cp runs/demo/study_config.json $R/
for r in 0 8 24; do ln -sfn $PWD/runs/demo/saes/batchtopk_m2048_k32_r${r}_resin $R/saes/; done
$PY results/causal-removal-readings-gemma3/run_table.py --run $R --out results/probing-power-gemma3 --analyses probing \
    --probe-docs 1000 --ce-contexts 8 --bootstrap 2000
