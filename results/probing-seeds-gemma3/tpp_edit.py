"""Why is the hybrids' TPP exactly 0 on language ID (K3)? For seed 0's plain SAE and r = 24 hybrid, on 400 language
documents (one 70/30 split, the probing analysis's pooling and residual probes), the N = 50 latents TPP zeroes for
each class: how many are dense (> 10% of 8,192 tokens of the demo cache, per-token threshold codes), how many
documents they fire on, the size of the edit
||codes[:, chosen] @ W_dec[chosen]|| against ||pooled residual||, and the shift of the probe's logit against its
margin |x . w + b| on the class's test documents.

    .venv/bin/python results/probing-seeds-gemma3/tpp_edit.py   # after K3's command.sh
"""

import json

import numpy as np
import torch

from scaffold_sae.analyses.codes import firing_density
from scaffold_sae.cache import ActivationCache
from scaffold_sae.evals import DENSE
from scaffold_sae.models import load_model
from scaffold_sae.probing import (fit_probe, load_dataset, one_vs_rest_tasks, pool_activations, probe_direction,
                                  stratified_splits, tpp_latents)
from scaffold_sae.saving import load_sae
from scaffold_sae.saved_analyses import stored_study_config

torch.set_num_threads(1)
N, DOCS = 50, 400
study = stored_study_config(json.load(open("runs/K3/study_config.json")))
saes = {r: load_sae(f"runs/K3/saes/batchtopk_m2048_k32_r{r}_resin_s0") for r in (0, 24)}
lm = load_model(study.harvest.model)
tokens = ActivationCache.open("runs/demo/cache", verify="none").sample(8192, seed=0).float()
density = {r: firing_density(s, tokens, "threshold") for r, s in saes.items()}
data = load_dataset("language", DOCS, 0)
pooled = pool_activations(lm, study.harvest.layer, data.texts, {str(r): s for r, s in saes.items()})
labels = np.asarray(data.labels)
resid = pooled.resid.double().numpy()
split = stratified_splits(labels, 1, 0.3, 0)[0]
tasks = one_vs_rest_tasks(labels, len(data.classes), split, (0, 0))
print(f"language ID, {DOCS} documents, {len(tasks)} one-vs-rest tasks, N = {N} latents zeroed per task\n")
print("| SAE | class | dense among the chosen | documents a chosen latent fires on | ‖edit‖ / ‖x‖ | "
      "median \\|logit shift\\| / \\|margin\\| (test) | test predictions flipped |\n|---|---|---|---|---|---|---|")
for r, sae in saes.items():
    codes = pooled.codes[str(r)].double().numpy()
    w_dec = sae.W_dec.detach().double().numpy()
    for task in tasks:
        probe = fit_probe(resid[task.train], task.train_y, 0)
        w, b = probe_direction(probe)
        chosen = tpp_latents(codes, w_dec, task, probe, N)
        edit = codes[:, chosen] @ w_dec[chosen]
        x = resid[task.test]
        shift, margin = np.abs(edit[task.test] @ w), np.abs(x @ w + b)
        flipped = int((probe.predict(x) != probe.predict(x - edit[task.test])).sum())
        dense = int((density[r][torch.as_tensor(chosen)] > DENSE).sum())
        fired = (codes[:, chosen] > 0).mean()
        print(f"| {'plain' if r == 0 else f'r = {r}'} | {data.classes[task.target]} | {dense} of {N} | {fired:.3f} | "
              f"{np.median(np.linalg.norm(edit, axis=1) / np.linalg.norm(resid, axis=1)):.4f} | "
              f"{np.median(shift / margin):.4f} | {flipped} of {len(task.test)} |")
