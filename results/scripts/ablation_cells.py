"""Print the cells and comparisons of causal-ablation tables (table.json from run_table.py) as markdown.

    python results/scripts/ablation_cells.py results/H3-causal-gemma3-L9-200ctx-grid/*/table.json
"""

import json
import sys


def interval(v: dict | None, digits: int = 2) -> str:
    if not v or v.get("value") is None:
        return "-"
    return f"{v['value']:.{digits}f} [{v['low']:.{digits}f}, {v['high']:.{digits}f}]"


for path in sys.argv[1:]:
    data = json.load(open(path))
    table = data["analyses"]["ablation_table"]
    print(f"\n### {path}: {table['sae']} (r = {table['rank']}, centred {table['scaffold_centred']}), "
          f"{table['n_predictions']} predictions, clean CE {interval(table['ce_clean'])}, wall {data['wall_s']:.0f} s\n")
    print("| subject | operator | positions | CE / clean | dCE | KL | per-basis ratios |\n|---|---|---|---|---|---|---|")
    for c in table["cells"]:
        bases = ", ".join(f"{r:.2f}" for r in c["per_basis_ratio"]) if c.get("per_basis_ratio") else ""
        print(f"| {c['subject']} | {c['operator']} | {c['positions']} | {interval(c['ratio'])} | {interval(c['delta'])} "
              f"| {interval(c['kl'])} | {bases} |")
    print("\n| numerator | denominator | positions | like for like | CE ratio | >= 2? |\n|---|---|---|---|---|---|")
    for c in table["comparisons"]:
        print(f"| {c['numerator']} | {c['denominator']} | {c['positions']} | {c['like_for_like']} "
              f"| {interval(c['ce_ratio'], 3)} | {c['reaches_2']} |")
