# Experiment H (issue 11): Gemma-3-270M layer 9, baseline + r = 8 (encoder sees the residual), 2 shared CPU cores.
# 1. train (the study; its evaluation stage was stopped once both SAEs were saved, to free the CPU for the table)
PYTHONPATH=src python -m scaffold_sae study --config results/causal-removal-readings-gemma3/config.yaml --out runs/causal-removal-readings-gemma3 --no-progress
# 2. the causal ablation table on the saved SAEs (reduced to fit the session: see RESULTS.md)
PYTHONPATH=src python -m scaffold_sae analyse runs/causal-removal-readings-gemma3 \
    --out results/causal-removal-readings-gemma3 --no-progress \
    --analyse structure ablation_table --analyses.tokens 8192 --analyses.ce_tokens 2560 --harvest.ce_tokens 2560 \
    --harvest.batch_size 4 --analyses.bootstrap_samples 2000 --analyses.redundancy.redundancy_points 6 \
    --analyses.probing.probe_docs 0 --analyses.ablation_table.ablation_subjects scaffold,pca,random,residual \
    --analyses.ablation_table.ablation_operators zero,mean --analyses.ablation_table.ablation_random_bases 2 \
    --analyses.ablation_table.ablation_splices false \
    --analyses.ablation_table.ablation_positions ordinary,all
# 3. the uncentred scaffold (scaffold on x, not x - b_dec), same cache, baseline reused, then a reduced table
mkdir -p runs/H-uncentred/saes && cp runs/causal-removal-readings-gemma3/study_config.json runs/H-uncentred/
ln -sfn $PWD/runs/causal-removal-readings-gemma3/saes/batchtopk_m2048_k32_r0_resin runs/H-uncentred/saes/
PYTHONPATH=src python -m scaffold_sae train --cache runs/causal-removal-readings-gemma3/cache --out runs/H-uncentred/saes \
    --arch batchtopk --width 2048 --k 32 --ranks 8 --encoder-input residual --scaffold-centred false \
    --tokens 614400 --batch-size 4096 --seed 0 --no-progress
PYTHONPATH=src python -m scaffold_sae analyse runs/H-uncentred \
    --out results/causal-removal-readings-gemma3/uncentred --no-progress \
    --analyse structure ablation_table --analyses.tokens 8192 --analyses.ce_tokens 2560 --harvest.ce_tokens 2560 \
    --harvest.batch_size 4 --analyses.bootstrap_samples 2000 --analyses.redundancy.redundancy_points 6 \
    --analyses.probing.probe_docs 0 --analyses.ablation_table.ablation_subjects scaffold,pca \
    --analyses.ablation_table.ablation_operators zero,mean --analyses.ablation_table.ablation_random_bases 5 \
    --analyses.ablation_table.ablation_splices false \
    --analyses.ablation_table.ablation_positions ordinary,all
