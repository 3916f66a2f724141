"""Mean +- sd over seeds of the structure statistics of experiment J (random-initialised scaffold) next to the demo's
PCA-initialised hybrids (seed 0). Prints markdown and writes summary.json.

    python results/random-scaffold-init-gemma3/summarise.py
"""

import json
import statistics
from pathlib import Path

HERE = Path(__file__).parent
FIELDS = {"first angle": lambda s: min(s["principal_angles_deg"]),
          "median angle": lambda s: statistics.median(s["principal_angles_deg"]),
          "last angle": lambda s: max(s["principal_angles_deg"]),
          "mean cos^2": lambda s: s["mean_cos2"],
          "variance in span(U)": lambda s: s["variance_share_scaffold"],
          "variance in top-r PCs": lambda s: s["variance_share_pca"],
          "massive dim in span(U)": lambda s: max(s["outlier_dim_in_scaffold"] or [float("nan")])}


def rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())["analyses"]["structure"]["saes"]


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}"


summary = {}
print("| init | r | seeds | " + " | ".join(FIELDS) + " |\n|" + "---|" * (3 + len(FIELDS)))
for init, path in (("random", HERE / "structure/table.json"), ("pca (demo)", HERE / "structure-pca-init/table.json")):
    for rank in (8, 24):
        chosen = [s for s in rows(path) if s["rank"] == rank]
        stats = {name: [f(s) for s in chosen] for name, f in FIELDS.items()}
        summary[f"{init} r={rank}"] = {"saes": [s["sae"] for s in chosen], **stats}
        print(f"| {init} | {rank} | {len(chosen)} | " + " | ".join(fmt(v) for v in stats.values()) + " |")
(HERE / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
