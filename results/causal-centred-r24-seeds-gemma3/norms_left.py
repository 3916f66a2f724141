"""Is seed 2's larger ratio (2.06 at all positions, against 1.42-1.63 for the other six seeds) a matter of how much
the zeroing leaves? For each of H17's 7 centred r = 24 scaffolds: ||x - U V^T x|| / ||x|| and ||x - U V^T x||, mean
over the special rows (BOS and attention sinks) and the ordinary rows of 16 held-out contexts at layer 9.

    .venv/bin/python results/causal-centred-r24-seeds-gemma3/norms_left.py
"""

import json

from safetensors.torch import load_file

from scaffold_sae.corpus import load_corpus, pack_contexts
from scaffold_sae.lm_passes import position_class_rows
from scaffold_sae.models import load_model
from scaffold_sae.saved_analyses import stored_study_config

SAES = {s: f"runs/O/saes/batchtopk_m2048_k32_r24_resin_s{s}" for s in range(3)}
SAES.update({s: f"runs/H17/train/saes/batchtopk_m2048_k32_r24_resin_s{s}" for s in range(3, 7)})

study = stored_study_config(json.load(open("runs/O/study_config.json")))
lm = load_model(study.harvest.model)
contexts = pack_contexts(lm.tokenizer, load_corpus(study.harvest.corpus), study.harvest.ctx_len,
                         16 * study.harvest.ctx_len, split="heldout", seed=study.seed, bos_id=lm.bos_token_id)
ordinary, special = position_class_rows(lm, study.harvest.layer, contexts, 2000, batch_size=4)
print(f"{special.shape[0]} special rows (mean ||x|| {special.norm(dim=1).mean():.0f}), {ordinary.shape[0]} ordinary "
      f"rows (mean ||x|| {ordinary.norm(dim=1).mean():.0f})\n")
print("| seed | special: left / ‖x‖ | special: ‖left‖ | ordinary: left / ‖x‖ | ordinary: ‖left‖ |\n|---|---|---|---|---|")
for seed, path in SAES.items():
    scaffold = load_file(f"{path}/scaffold.safetensors")
    P = scaffold["U"].float() @ scaffold["V"].float().T
    cells = []
    for x in (special, ordinary):
        left = (x - x @ P.T).norm(dim=1)
        cells += [f"{(left / x.norm(dim=1)).mean():.4f}", f"{left.mean():.0f}"]
    print(f"| {seed} | " + " | ".join(cells) + " |")
