#!/bin/bash
# Experiment H5 (issue 11, item 4): the redundancy comparison at 200 CE contexts (25,200 predictions) on Gemma-3-270M
# layer 9: the demo's plain SAE and its centred r = 8 hybrid (run directory of H2). The plain SAE's latents are ranked
# by alignment with span(U); N = 1, the paper's share (98 of 2,048 = 787 / 16,384) and all 2,048 are ablated under
# zero and mean ablation, against density-matched random latents and the scaffold term removed under the same
# operator (ordinary positions). Means and donors from 120 other held-out contexts; paired bootstrap over contexts.
set -euo pipefail
PY=${PY:-.venv/bin/python}
$PY results/causal-removal-readings-gemma3/run_table.py --run runs/H2/c8 --out results/redundancy-200ctx-gemma3 \
    --analyses ablation_table,redundancy --subjects scaffold --operators zero,mean --positions ordinary \
    --splices false --redundancy-points 2 --ce-contexts 200 --eval-tokens 40960 --fit-tokens 8192 --bootstrap 2000
