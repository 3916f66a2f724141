#!/bin/bash
# Experiment H7 (issue 11, item 5): the fixed-probe topic analysis on Gemma-3-270M layer 9 with more test documents
# than the demo's 60. SAEs: H3's plain SAE and uncentred r = 24 hybrid (runs/H2/u24: the reading under which the
# paper's causal ratio reproduced). Probes trained on clean mean-pooled activations of 350 of 500 documents per
# dataset (BBC topic, language ID), held fixed, evaluated on the other 150 after each ablation (scaffold term, top-24
# PCs, 24 random directions; zero and mean; ordinary and all positions) and after zeroing the paper's share of
# topic-aligned latents (2,048 of 16,384 = 12.5%: 256 of 2,048), read at layer 9, layer 12 and the last block.
set -euo pipefail
PY=${PY:-.venv/bin/python}
$PY results/causal-removal-readings-gemma3/run_table.py --run runs/H2/u24 --out results/topic-fixed-probe-gemma3 \
    --analyses topic_ablation --ce-contexts 200 --eval-tokens 40960 --fit-tokens 8192 --bootstrap 2000 \
    --topic-docs 500 --topic-operators zero,mean --topic-positions ordinary,all
