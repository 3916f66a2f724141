"""How much of the activation mean each zero-type removal takes away (the geometry behind the causal ratios).

For each SAE's scaffold map A = U V^T, and for the top-r PCs (A = Q Q^T, PCA of the same rows around their mean), the
zero operator x - A x applied to the mean row mu of `--tokens` cached (ordinary) tokens: the massive dimension's
coordinate left, and the norm of the mean left in every other dimension. For a centred scaffold also the trained term
alone removed, mu - U V^T (mu - b_dec). Prints a Markdown table and writes JSON.

    python results/scripts/mean_removed.py --cache runs/demo/cache --out results/H12-mean-removed/table.json \
        NAME=SAE_DIR [NAME=SAE_DIR ...]
"""

import argparse
import json
from pathlib import Path

import torch

from scaffold_sae.cache import ActivationCache
from scaffold_sae.saving import load_sae
from scaffold_sae.subspace import pca


def left_after(mu: torch.Tensor, removed: torch.Tensor, massive: int) -> dict:
    left = mu - removed
    others = torch.ones_like(mu, dtype=torch.bool)
    others[massive] = False
    return {"massive_left": float(left[massive]), "others_left": float(left[others].norm())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("saes", nargs="+", help="NAME=SAE_DIR (split at the last =)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x = ActivationCache.open(args.cache, verify="fast").sample(args.tokens, seed=args.seed).float()
    mu = x.mean(0)
    massive = int(mu.abs().argmax())
    others = torch.ones_like(mu, dtype=torch.bool)
    others[massive] = False
    rows = {"mean": {"massive_left": float(mu[massive]), "others_left": float(mu[others].norm())}}
    ranks = set()
    for item in args.saes:
        name, path = item.rsplit("=", 1)
        sae = load_sae(path).eval()
        with torch.no_grad():
            U, V, b = sae.U.float(), sae.V.float(), sae.b_dec.float()
            ranks.add(U.shape[1])
            rows[f"{name}: zero, x - U V^T x"] = left_after(mu, (mu @ V) @ U.t(), massive)
            if sae.cfg.scaffold_centred:
                rows[f"{name}: term alone, x - U V^T (x - b_dec)"] = left_after(mu, ((mu - b) @ V) @ U.t(), massive)
    vectors = pca(x).vectors.float()
    for r in sorted(ranks):
        q = vectors[:, :r]
        rows[f"top-{r} PCs: zero, x - Q Q^T x"] = left_after(mu, (mu @ q) @ q.t(), massive)
    print(f"{args.tokens} cached tokens of {args.cache}; massive dimension {massive}\n")
    print("| removal applied to the mean row | massive dimension's coordinate left | norm of the mean left in the other dims |")
    print("|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['massive_left']:.1f} | {row['others_left']:.1f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cache": args.cache, "tokens": args.tokens, "massive_dim": massive, "rows": rows},
                              indent=1) + "\n")


if __name__ == "__main__":
    main()
