#!/bin/bash
# Experiment H6 (issue 11, items 4-5): redundancy and the fixed-probe topic analysis on SmolLM2-135M layer 15, with the
# plain SAE and the centred r = 24 hybrid of H4. Redundancy at 200 CE contexts (25,200 predictions): the plain SAE's
# latents ranked by alignment with span(U), N = 1, the paper's share (111 of 2,304) and all, zero and mean ablation,
# density-matched random latents and the scaffold term removed under the same operator (ordinary positions). Topic:
# probes trained on clean activations of 350 of 500 documents per dataset (BBC topic, language ID), held fixed,
# evaluated on the other 150 test documents after each ablation, read at layer 15 and later layers. Runs after H4's command.sh.
set -euo pipefail
PY=${PY:-.venv/bin/python}
$PY results/causal-removal-readings-gemma3/run_table.py --run runs/H4/c24 --out results/redundancy-topic-smollm2 \
    --analyses ablation_table,redundancy,topic_ablation --subjects scaffold --operators zero,mean \
    --positions ordinary --splices false --redundancy-points 2 --ce-contexts 200 --eval-tokens 40960 \
    --fit-tokens 8192 --bootstrap 2000 --topic-docs 500
