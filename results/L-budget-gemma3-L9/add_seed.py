"""Add seed 2 to experiment L without retraining seeds 0 and 1 (their weights are not kept in the repository).

The study trains every seed in lockstep on the same batches; the batch order depends only on the study's `seed`, and
an SAE's initialisation only on its own seed (tests/test_trainer.py: lockstep equals separate training). L's six SAEs
all stopped at the budget, so seed 2's three SAEs trained alone see exactly what they would have seen beside them.
This script harvests L's cache, trains and evaluates seed 2's SAEs, merges them into the committed 2-seed results.json
and rewrites report.md / results.json for 3 seeds. Running the study with `seeds: 3` from an empty folder gives the same
SAEs in one run (about 2 h on 2 cores instead of 50 min).

    .venv/bin/python results/L-budget-gemma3-L9/add_seed.py --run runs/L
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from scaffold_sae.config import build, load_config_file
from scaffold_sae.models import load_model
from scaffold_sae.report import format_summary_table
from scaffold_sae.study_report import write_report
from scaffold_sae.study import (StudyConfig, default_layer, eval_contexts, evaluate_all, named_members, sae_records,
                                study_cache, threshold_section, training_results, train_missing)

HERE = Path(__file__).parent
CONFIG = HERE.parent / "configs" / "gemma-L9-budget.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/L", help="working folder (cache, saes, evals)")
    parser.add_argument("--new-seed", type=int, default=2, help="the seed index to add")
    args = parser.parse_args()
    out = Path(args.run)
    cfg = build(StudyConfig, load_config_file(CONFIG)).validate()
    before = json.loads((HERE / "results.json").read_text())
    assert cfg.seeds == args.new_seed + 1, f"{CONFIG} must name {args.new_seed + 1} seeds"

    timings = {}
    clock = time.perf_counter()
    lm = load_model(cfg.model, device=cfg.device)
    layer = default_layer(cfg.model, lm.n_layers) if cfg.layer is None else cfg.layer
    cache = study_cache(cfg, lm, layer, out, progress=False)
    timings["harvest_s"] = time.perf_counter() - clock
    assert cache.manifest["fingerprint"] == before["cache"]["fingerprint"], "not experiment L's cache"

    clock = time.perf_counter()
    sae_dirs = train_missing(cache, cfg, out / "saes", progress=False, seeds={args.new_seed})
    timings["train_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    results = evaluate_all(sae_dirs, lm, layer, eval_contexts(cfg, lm), cfg, out / "evals", progress=False)
    timings["eval_s"] = time.perf_counter() - clock

    new = sae_records(results, named_members(cfg, cache.d_model), cfg.arch)
    study = dict(before)
    study["config"] = {**asdict(cfg), "layer": layer}
    study["saes"] = {**before["saes"], **new["saes"]}
    study["threshold_evals"] = {**before["threshold_evals"], **new["threshold_evals"]}
    study["training"] = {**before["training"], **training_results(sae_dirs)}
    study["timings"] = {**before["timings"], **{f"seed{args.new_seed}_{k}": v for k, v in timings.items()}}
    study.pop("sections", None)
    study.pop("summary", None)
    write_report(study, out / "report", sections=[threshold_section(study)])
    for name in ("results.json", "report.md"):
        (HERE / name).write_text((out / "report" / name).read_text())
    print(format_summary_table(study["saes"]))
    print(json.dumps(timings))


if __name__ == "__main__":
    main()
