# Experiment H (issue 11): Gemma-3-270M layer 9, baseline + r = 8 (encoder sees the residual), 2 shared CPU cores.
# 1. train (the study; its evaluation stage was stopped once both SAEs were saved, to free the CPU for the table)
PYTHONPATH=src python -m scaffold_sae study --config results/causal-removal-readings-gemma3/config.yaml --out runs/causal-removal-readings-gemma3 --no-progress
# 2. the causal ablation table on the saved SAEs (reduced to fit the session: see RESULTS.md)
PYTHONPATH=src python results/causal-removal-readings-gemma3/run_table.py --run runs/causal-removal-readings-gemma3 \
    --out results/causal-removal-readings-gemma3 --ce-contexts 20 --analyses structure,ablation_table \
    --subjects scaffold,pca,random,residual --random-bases 2 --operators zero,mean --positions ordinary,all \
    --splices false --bootstrap 2000
# 3. the uncentred scaffold (scaffold on x, not x - b_dec), same cache, baseline reused, then a reduced table
mkdir -p runs/H-uncentred/saes && cp runs/causal-removal-readings-gemma3/study_config.json runs/H-uncentred/
ln -sfn $PWD/runs/causal-removal-readings-gemma3/saes/batchtopk_m2048_k32_r0_resin runs/H-uncentred/saes/
PYTHONPATH=src python -m scaffold_sae train --cache runs/causal-removal-readings-gemma3/cache --out runs/H-uncentred/saes \
    --arch batchtopk --width 2048 --k 32 --ranks 8 --encoder-input residual --scaffold-centred false \
    --tokens 614400 --batch-size 4096 --seed 0 --no-progress
PYTHONPATH=src python results/causal-removal-readings-gemma3/run_table.py --run runs/H-uncentred \
    --out results/causal-removal-readings-gemma3/uncentred --ce-contexts 20 --analyses structure,ablation_table \
    --subjects scaffold,pca --operators zero,mean --positions ordinary,all --splices false --bootstrap 2000
