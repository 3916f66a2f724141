"""Print the cells and comparisons of causal-ablation tables, and the readouts and paired differences of topic
analyses (a table.json of run_table.py, or its run in the experiment's summary.json), as markdown.

    python results/scripts/ablation_cells.py results/causal-200ctx-grid-gemma3/*/table.json
"""

import sys

from scaffold_sae.over_seeds import analyses_of, read_record


def interval(v: dict | None, digits: int = 2) -> str:
    if not v or v.get("value") is None:
        return "-"
    return f"{v['value']:.{digits}f} [{v['low']:.{digits}f}, {v['high']:.{digits}f}]"


def topic(path: str, result: dict) -> None:
    print(f"\n### {path}: topic, {result['sae']} (r = {result['rank']}, layer {result['layer']}), test documents "
          f"{result['test_docs']}\n")
    print("| dataset | condition | read at | accuracy | chance |\n|---|---|---|---|---|")
    for r in result["readouts"]:
        print(f"| {r['dataset']} | {r['condition']} | {r['read_layer']} | {interval(r['accuracy'])} | {r['chance']:.2f} |")
    print("\n| dataset | scaffold condition | minus | read at | accuracy difference |\n|---|---|---|---|---|")
    for d in result.get("differences") or []:
        print(f"| {d['dataset']} | {d['condition']} | {d['against']} | {d['read_layer']} | {interval(d['difference'])} |")


for path in sys.argv[1:]:
    analyses = analyses_of(read_record(path))
    if analyses.get("topic_ablation"):
        topic(path, analyses["topic_ablation"])
    table = analyses.get("ablation_table")
    if not table:
        continue
    print(f"\n### {path}: {table['sae']} (r = {table['rank']}, centred {table['scaffold_centred']}), "
          f"{table['n_predictions']} predictions, clean CE {interval(table['ce_clean'])}\n")
    print("| subject | operator | positions | CE / clean | dCE | KL | per-basis ratios |\n|---|---|---|---|---|---|---|")
    for c in table["cells"]:
        bases = ", ".join(f"{r:.2f}" for r in c["per_basis_ratio"]) if c.get("per_basis_ratio") else ""
        print(f"| {c['subject']} | {c['operator']} | {c['positions']} | {interval(c['ratio'])} | {interval(c['delta'])} "
              f"| {interval(c['kl'])} | {bases} |")
    print("\n| numerator | denominator | positions | like for like | CE ratio | >= 2? |\n|---|---|---|---|---|---|")
    for c in table["comparisons"]:
        print(f"| {c['numerator']} | {c['denominator']} | {c['positions']} | {c['like_for_like']} "
              f"| {interval(c['ce_ratio'], 3)} | {c['reaches_2']} |")
