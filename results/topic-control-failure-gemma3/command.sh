#!/bin/bash
# Experiment H18 (issues 11 and 12): why the paper's topic control holds for Gemma-3 seed 0 and not seeds 1-2 (H15).
# Needs O's SAEs and eval records (results/analyses-seeds-gemma3/command.sh). See control.py's docstring.
set -euo pipefail
PY=${PY:-.venv/bin/python}
$PY results/topic-control-failure-gemma3/control.py --saes runs/O/saes --evals runs/O/evals --seeds 0,1,2 \
    --out results/topic-control-failure-gemma3 | tee results/topic-control-failure-gemma3/control.txt
