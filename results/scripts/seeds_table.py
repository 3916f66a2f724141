"""The markdown table causal_seeds.py and topic_seeds.py print: one row per reading, each seed's estimate with its
interval (over contexts or documents), then mean ± sd and the 95% t-interval over seeds."""

from scaffold_sae.claims import t_interval


def seeds_table(first_column: str, rows: dict[str, list[dict]]) -> str:
    """rows: reading -> one estimate ({"value", "low", "high"}) per seed, seed 0 first."""
    seeds = len(next(iter(rows.values())))
    lines = [f"| {first_column} | " + " | ".join(f"seed {i}" for i in range(seeds))
             + " | mean ± sd [95% t-interval over seeds] |", "|---|" + "---|" * (seeds + 1)]
    for label, estimates in rows.items():
        mean, sd, low, high = t_interval([e["value"] for e in estimates])
        cells = [f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]" for e in estimates]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean:.3f} ± {sd:.3f} [{low:.3f}, {high:.3f}] |")
    return "\n".join(lines)
