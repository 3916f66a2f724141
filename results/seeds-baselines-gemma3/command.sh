PYTHONPATH=/work/wt-baselines/src /work/main/.venv/bin/python -m scaffold_sae study --config results/configs/gemma-L9-seeds-baselines-small.yaml --out /work/runs-baselines/I-small --no-progress
