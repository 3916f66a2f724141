"""Verdicts of the claims engine (scaffold_sae.claims) on the stored results: each study, and the seed series assembled
from their per-seed tables. Run from the repository root:
    PYTHONPATH=src python results/scripts/claims_verdicts.py [all|studies|causal|redundancy|topic|probing]
"""
import json
from pathlib import Path

from scaffold_sae.claims import claim_rows
from scaffold_sae.plan import ClaimsPlan

R = Path("results")


def analyses(path):
    d = json.loads(Path(path).read_text())
    return d["analyses"] if "analyses" in d and "command" in d else d


def series(files):
    seeds = [analyses(R / f) for f in files]
    return {"config": {"seeds": len(seeds)}, "saes": {}, "analyses": seeds[0],
            "seed_analyses": {str(i): a for i, a in enumerate(seeds) if i}}


def line(r):
    iv = f"{r.value:.4g} [{r.low:.4g}, {r.high:.4g}]" if r.low is not None else (f"{r.value:.4g}" if r.value is not None else "-")
    adj = f"; Holm p {r.p_adjusted:.2g}" if r.p_adjusted is not None else ""
    return f"  {r.row:11s} {r.key:10s} {r.verdict.upper():45s} {iv} (units {r.units}{adj})\n      why: {r.note[:600]}"


def show(title, study, keys, plans):
    print(f"\n### {title}")
    for label, plan in plans:
        print(f" plan: {label}")
        for r in claim_rows(study, plan):
            if r.key in keys:
                print(line(r))


CAUSAL = {
    "H17 gemma3 L9 centred r=24 (H3 c24 + 6 seeds)": ["H3-causal-gemma3-L9-200ctx-grid/c24/table.json"] + [
        f"H17-causal-centred-r24-seeds-gemma3-L9/seed{s}/table.json" for s in range(1, 7)],
    "H16 gemma3 L9 uncentred r=24 (H3 u24 + 2 seeds)": ["H3-causal-gemma3-L9-200ctx-grid/u24/table.json"] + [
        f"H16-causal-uncentred-r24-seeds-gemma3-L9/seed{s}/table.json" for s in (1, 2)],
    "H8 gemma3 L9 centred r=8 (H2 c8 + 2 seeds)": ["H2-causal-gemma3-L9-200ctx/c8/table.json"] + [
        f"H8-causal-seeds-gemma3-L9/seed{s}/table.json" for s in (1, 2)],
    "H9 gemma3 L9 uncentred r=8 (H2 u8 + 2 seeds)": ["H2-causal-gemma3-L9-200ctx/u8/table.json"] + [
        f"H9-causal-uncentred-seeds-gemma3-L9/seed{s}/table.json" for s in (1, 2)],
    "H19 gemma3 L9 centred r=8, mean (H2 c8 + 2 seeds)": ["H2-causal-gemma3-L9-200ctx/c8/table.json"] + [
        f"H19-causal-mean-seeds-gemma3-L9/seed{s}/table.json" for s in (1, 2)],
    **{f"H14 smollm2 L15 {n} (H4 {n} + 2 seeds)": [f"H4-causal-smollm2-L15-200ctx/{n}/table.json"] + [
        f"H14-causal-seeds-smollm2-L15/{n}-seed{s}/table.json" for s in (1, 2)] for n in ("c24", "u24", "u8")},
}

if __name__ == "__main__":
    import sys
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    if which in ("all", "studies"):
        for name in ("D-demo", "D0-demo-encoder-x", "O-analyses-seeds-gemma3-L9", "I-seeds-baselines-gemma3-L9",
                     "N-seeds-baselines-smollm2-L15", "J-random-scaffold-gemma3-L9", "M3-matryoshka-seeds-gemma3-L9",
                     "K3-probing-seeds-gemma3-L9", "L-budget-gemma3-L9", "P-design-seeds-gemma3-L9"):
            path = R / name / "results.json"
            if path.exists():
                show(name, json.loads(path.read_text()), {"dense", "structure", "causal", "redundancy", "topic",
                                                          "probing"}, [("stored / default", None)])
    if which in ("all", "causal"):
        for title, files in CAUSAL.items():
            study = series(files)
            sets = [{(c["numerator"].split(":")[1], c["positions"])
                     for c in a.get("ablation_table", {}).get("comparisons", [])
                     if c["numerator"].startswith("scaffold:") and c["denominator"].startswith("pca:")}
                    for a in [study["analyses"], *study["seed_analyses"].values()]]
            measured = sorted(set.intersection(*sets))
            show(title, study, {"causal"}, [(f"seeds 3, {op}, {pos}", ClaimsPlan(seeds=3, causal_operator=op,
                                                                                causal_positions=pos))
                                            for op, pos in measured])
    if which in ("all", "redundancy"):
        for title, files in {"H20 gemma3 L9 r=8 (H5 + 2 seeds)": ["H5-redundancy-gemma3-L9-200ctx/table.json",
                                                                    "H20-redundancy-seeds/gemma-seed1/table.json",
                                                                    "H20-redundancy-seeds/gemma-seed2/table.json"],
                             "H20 smollm2 L15 r=24 (H6 + 2 seeds)": ["H6-redundancy-topic-smollm2-L15/table.json",
                                                                      "H20-redundancy-seeds/smollm2-seed1/table.json",
                                                                      "H20-redundancy-seeds/smollm2-seed2/table.json"]
                             }.items():
            show(title, series(files), {"redundancy"}, [("seeds 3", ClaimsPlan(seeds=3))])
    if which in ("all", "topic"):
        for title, files, pos in (("H15 gemma3 topic (H11 gemma-c24 + 2 seeds)", ["H11-topic-paired/gemma-c24/table.json",
                                   "H15-topic-seeds/gemma-seed1/table.json", "H15-topic-seeds/gemma-seed2/table.json"],
                                   "ordinary"),
                                  ("H15 smollm2 topic (H11 smollm2-c24 + 2 seeds)", [
                                      "H11-topic-paired/smollm2-c24/table.json", "H15-topic-seeds/smollm2-seed1/table.json",
                                      "H15-topic-seeds/smollm2-seed2/table.json"], "all")):
            study = series(files)
            show(title, study, {"topic"}, [(f"seeds 3, zero, {p}", ClaimsPlan(seeds=3, topic_positions=p))
                                           for p in ("ordinary", "all")])
    if which in ("all", "probing"):
        study = series([f"K3-probing-seeds-gemma3-L9/seed{s}/table.json" for s in range(3)])
        study["saes"] = json.loads((R / "K3-probing-seeds-gemma3-L9/results.json").read_text())["saes"]
        show("K3 gemma3 probing (3 seeds)", study, {"probing"}, [("seeds 3", ClaimsPlan(seeds=3))])
