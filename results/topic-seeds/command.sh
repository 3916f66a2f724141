#!/bin/bash
# Experiment H15 (issues 11 and 12): H11's fixed-probe topic readings over training seeds. H11's protocol (1,000 BBC
# documents, 700 fit the probes on clean activations, 300 test; read at layer L, L+3 and the last block; paired
# differences on the same test documents, 2,000 bootstrap resamples) for the centred r = 24 hybrids of seeds 1 and 2;
# seed 0 is H11's. To fit the session, BBC topic only (the claim's dataset) and each model's headline positions in H11:
# Gemma-3 L9 ordinary positions (O's seeds 1 and 2: the demo's settings), SmolLM2 L15 all positions (N's seeds 1 and 2:
# H4's recipe). Needs O's and N's SAEs (their command.sh) and K3's / H4's study_config.json.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=results/topic-seeds
T="$PY results/causal-removal-readings-gemma3/run_table.py --analyses topic_ablation --ce-contexts 200 --eval-tokens 40960
   --fit-tokens 8192 --bootstrap 2000 --topic-docs 1000 --topic-operators zero --topic-datasets bbc_topic"
link() {  # link NAME CONFIG PLAIN HYBRID
    mkdir -p runs/H15/$1/saes && cp $2 runs/H15/$1/study_config.json
    ln -sfn $PWD/$3 runs/H15/$1/saes/
    ln -sfn $PWD/$4 runs/H15/$1/saes/
}
for s in 1 2; do
    link smollm2-seed$s runs/H4/study/study_config.json runs/N/saes/batchtopk_m2304_k32_r0_resin_s$s \
        runs/N/saes/batchtopk_m2304_k32_r24_resin_s$s
    [ -f $OUT/smollm2-seed$s/table.json ] || $T --run runs/H15/smollm2-seed$s --out $OUT/smollm2-seed$s --topic-positions all
    link gemma-seed$s runs/O/study_config.json runs/O/saes/batchtopk_m2048_k32_r0_resin_s$s \
        runs/O/saes/batchtopk_m2048_k32_r24_resin_s$s
    [ -f $OUT/gemma-seed$s/table.json ] || $T --run runs/H15/gemma-seed$s --out $OUT/gemma-seed$s --topic-positions ordinary
done
$PY results/scripts/topic_seeds.py results/topic-paired-vs-pcs/smollm2-c24/table.json $OUT/smollm2-seed1/table.json \
    $OUT/smollm2-seed2/table.json --condition scaffold:zero:all | tee $OUT/over-seeds.md
$PY results/scripts/topic_seeds.py results/topic-paired-vs-pcs/gemma-c24/table.json $OUT/gemma-seed1/table.json \
    $OUT/gemma-seed2/table.json --condition scaffold:zero:ordinary | tee -a $OUT/over-seeds.md
