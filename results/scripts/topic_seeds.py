"""A fixed-probe topic reading over training seeds, as markdown: for one condition (e.g. scaffold:zero:all) of BBC
topic read at the last block, each seed's accuracy and paired differences against the top-r PCs and random
directions zeroed at the same positions (bootstrap intervals over test documents), then mean +- sd and the 95%
t-interval over seeds.

    python results/scripts/topic_seeds.py seed0/table.json seed1/table.json seed2/table.json \
        --condition scaffold:zero:all
"""

import argparse
import json

from seeds_table import seeds_table


def readings(path: str, condition: str, dataset: str) -> dict[str, dict]:
    topic = json.load(open(path))["analyses"]["topic_ablation"]
    last = max(r["read_layer"] for r in topic["readouts"])
    _, operator, positions = condition.split(":")
    out = {"chance": {"value": next(r["chance"] for r in topic["readouts"] if r["dataset"] == dataset)}}
    for r in topic["readouts"]:
        if r["dataset"] == dataset and r["read_layer"] == last and r["condition"] in ("clean", condition):
            out[r["condition"]] = r["accuracy"]
    for d in topic.get("differences") or []:
        if d["dataset"] == dataset and d["read_layer"] == last and d["condition"] == condition:
            out["minus " + d["against"]] = d["difference"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", nargs="+")
    parser.add_argument("--condition", required=True)
    parser.add_argument("--dataset", default="bbc_topic")
    args = parser.parse_args()
    per_seed = [readings(p, args.condition, args.dataset) for p in args.tables]
    rows = [k for k in per_seed[0] if k != "chance" and all(k in seed for seed in per_seed)]
    print(f"\n{args.dataset}, {args.condition}, read at the last block (chance {per_seed[0]['chance']['value']:.2f})\n")
    print(seeds_table("reading", {key: [seed[key] for seed in per_seed] for key in rows}))


if __name__ == "__main__":
    main()
