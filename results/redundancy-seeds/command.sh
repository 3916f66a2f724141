#!/bin/bash
# Experiment H20 (issues 11 and 12): H5's and H6's redundancy readings over training seeds. Same protocol as H5 / H6:
# 200 held-out CE contexts (25,200 predictions), means and donors from 120 other contexts, ordinary positions, zero
# and mean ablation, paired bootstrap over contexts. Each seed pairs its own plain SAE with its own hybrid, trained
# on the same batches: Gemma-3 L9 centred r = 8 (seeds 1-2: experiment O's, linked by H19's command; seed 0 is H5),
# SmolLM2 L15 centred r = 24 (seeds 1-2: experiment N's; seed 0 is H6, whose SAEs are N's seed 0 to the byte).
# Then results/scripts/redundancy_seeds.py combines the three seeds of each model. Gemma-3 seed 1 ran H5's whole curve
# (--redundancy-points 2: N = 1, 98, 2048); the other runs the paper's share alone (--redundancy-points 1, 40 min less
# per Gemma-3 run), whose density-matched random latents are a different draw (the generator is not spent on N = 1).
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=results/redundancy-seeds
T="$PY results/causal-removal-readings-gemma3/run_table.py --analyses ablation_table,redundancy --subjects scaffold
   --operators zero,mean --positions ordinary --splices false --ce-contexts 200
   --eval-tokens 40960 --fit-tokens 8192 --bootstrap 2000"
for s in 1 2; do
    R=runs/H19/seed$s   # O's plain SAE and centred r = 8 hybrid of seed s (made by H19's command.sh)
    [ -d $R/saes ] || { echo "run results/causal-mean-ablation-seeds-gemma3/command.sh first" >&2; exit 2; }
    points=$([ $s = 1 ] && echo 2 || echo 1)
    [ -f $OUT/gemma-seed$s/analyses.json ] || $T --run $R --out $OUT/gemma-seed$s --redundancy-points $points
done
for s in 1 2; do
    R=runs/H20/smollm2-seed$s
    mkdir -p $R/saes && cp runs/H4/study/study_config.json $R/
    for sae in batchtopk_m2304_k32_r0_resin_s$s batchtopk_m2304_k32_r24_resin_s$s; do
        ln -sfn $PWD/runs/N/saes/$sae $R/saes/
    done
    [ -f $OUT/smollm2-seed$s/analyses.json ] || $T --run $R --out $OUT/smollm2-seed$s --redundancy-points 1
done
$PY results/scripts/redundancy_seeds.py --label gemma3-L9-r8 results/redundancy-200ctx-gemma3/analyses.json \
    $OUT/gemma-seed1/analyses.json $OUT/gemma-seed2/analyses.json | tee $OUT/over-seeds.md
$PY results/scripts/redundancy_seeds.py --label smollm2-L15-r24 results/redundancy-topic-smollm2/analyses.json \
    $OUT/smollm2-seed1/analyses.json $OUT/smollm2-seed2/analyses.json | tee -a $OUT/over-seeds.md
