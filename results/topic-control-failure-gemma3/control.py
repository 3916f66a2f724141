"""Why the paper's topic control (the baseline SAE's latents most aligned with the topic probe zeroed) holds for
Gemma-3 seed 0's plain SAE and not for seeds 1 and 2 (H11 / H15).

For each seed's plain SAE this refits H11's clean BBC-topic probes (1,000 documents, the same 700 / 300 split, read at
layer L, L+3 and the last block) and reads them, unchanged, after three zero-ablations at the ordinary positions of
layer L (SAE error kept, codes at matched L0 as in H15):
  aligned:256         the control of H11 / H15 (the 256 latents whose decoder rows lie most in the probe's row space);
  aligned_sparse:256  the same ranking with the dense latents (firing on > 10% of held-out tokens) left out;
  dense:N             the N dense latents alone.
It prints how many dense latents the control picks and how large each edit is (mean ||removed|| / ||x|| over the
edited tokens), and writes the readouts (paired bootstrap 95% intervals over test documents) to --out.

    .venv/bin/python results/topic-control-failure-gemma3/control.py --saes runs/O/saes --evals runs/O/evals
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from scaffold_sae import probing
from scaffold_sae.analyses.ablation_table import rows_edit
from scaffold_sae.analyses.redundancy import latent_edit
from scaffold_sae.analyses.topic_ablation import (PAPER_CONTROL_SHARE, fixed_probe_readouts, pooled_after,
                                                  probe_aligned_latents, read_layers, tokenise)
from scaffold_sae.evals import DENSE
from scaffold_sae.models import load_model
from scaffold_sae.saving import load_sae


def measured(rows, sizes: list[float]):
    """rows, recording ||x - rows(x)|| / ||x|| of every edited row."""
    def wrapped(x: torch.Tensor) -> torch.Tensor:
        out = rows(x)
        sizes.extend(((x - out).norm(dim=1) / x.norm(dim=1).clamp_min(1e-12)).tolist())
        return out
    return wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saes", default="runs/O/saes")
    parser.add_argument("--evals", default="runs/O/evals", help="eval records with each latent's held-out density")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--layer", type=int, default=9)
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--out", default="results/topic-control-failure-gemma3")
    args = parser.parse_args()
    lm = load_model("gemma3-270m")
    layer, seed = args.layer, 0
    data = probing.load_dataset("bbc_topic", args.docs, seed)
    labels = np.asarray(data.labels)
    train, test = train_test_split(np.arange(len(labels)), test_size=0.3, random_state=seed, stratify=labels)
    docs = tokenise(lm, data.texts, 64)
    reads = read_layers(layer, lm.n_layers, "0,3,last")
    clean = pooled_after(lm, layer, docs, {}, [layer], 8, 10.0)["clean"][layer]
    probe = probing.fit_probe(clean[train], labels[train], seed)  # the layer-L probe: the same for every seed
    out = {"command": "python " + " ".join(["results/topic-control-failure-gemma3/control.py", *[
        f"--{k} {v}" for k, v in vars(args).items()]]), "train_docs": len(train), "test_docs": len(test), "seeds": {}}
    for s in [int(t) for t in args.seeds.split(",")]:
        clock = time.perf_counter()
        name = f"batchtopk_m2048_k32_r0_resin_s{s}"
        base = load_sae(Path(args.saes) / name).eval()
        record = json.loads((Path(args.evals) / f"{name}.json").read_text())
        mode = probing.inference_mode(base)
        density = torch.tensor(record[mode]["density"])
        dense = torch.nonzero(density > DENSE).flatten()
        n = max(1, int(round(PAPER_CONTROL_SHARE * int(base.cfg.width))))
        aligned = probe_aligned_latents(probe, base.W_dec, n)
        sparse = probe_aligned_latents(probe, base.W_dec, n, exclude=density > DENSE)
        subsets = {f"aligned:{n}": aligned, f"aligned_sparse:{n}": sparse, f"dense:{dense.numel()}": dense}
        sizes = {c: [] for c in subsets}
        conditions = {c: rows_edit(measured(latent_edit(base, idx, "zero", torch.zeros(1), mode), sizes[c]),
                                   "ordinary") for c, idx in subsets.items()}
        features = pooled_after(lm, layer, docs, conditions, reads, 8, 10.0)
        readouts, _, _ = fixed_probe_readouts(features, labels, train, test, "bbc_topic", seed)
        picked_dense = int(np.isin(aligned.numpy(), dense.numpy()).sum())
        out["seeds"][s] = {
            "sae": name, "inference": mode, "dense_latents": int(dense.numel()),
            "control_dense": picked_dense, "control_latents": n,
            "edit_size": {c: float(np.mean(v)) for c, v in sizes.items()},
            "control_density": float(density[aligned].mean()), "sparse_density": float(density[sparse].mean()),
            "readouts": [asdict(o) for o in readouts], "wall_s": time.perf_counter() - clock}
        print(f"seed {s}: {dense.numel()} dense latents, {picked_dense} of them among the {n} aligned; edit size "
              + ", ".join(f"{c} {np.mean(v):.3f}" for c, v in sizes.items()), flush=True)
        for o in readouts:
            a = o.accuracy
            print(f"  {o.condition:22s} read {o.read_layer:2d}: {a.value:.3f} [{a.low:.3f}, {a.high:.3f}]", flush=True)
    Path(args.out, "control.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
