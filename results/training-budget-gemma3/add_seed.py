"""Add seed 2 to experiment L without retraining seeds 0 and 1 (their weights are not kept in the repository).

The study trains every seed in lockstep on the same batches; the batch order depends only on the study's `seed`, and
an SAE's initialisation only on its own seed (tests/test_trainer.py: lockstep equals separate training). L's six SAEs
all stopped at the budget, so seed 2's three SAEs trained alone see exactly what they would have seen beside them.
This script harvests L's cache, trains and evaluates seed 2's SAEs, and merges them into the 2-seed results (the run
kept in summary.json) in runs/L/report/ (it ran once, on 2026-11-28, when the results.json was still committed). Running the study with `seeds: 3` from an empty folder gives the same
SAEs in one run (about 2 h on 2 cores instead of 50 min).

    .venv/bin/python results/training-budget-gemma3/add_seed.py --run runs/L
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from scaffold_sae.config import build, load_config_file, to_dict
from scaffold_sae.models import load_model
from scaffold_sae.over_seeds import read_record
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
    before = read_record(HERE / "results.json")  # the study run kept in summary.json
    assert cfg.sae.seeds == args.new_seed + 1, f"{CONFIG} must name {args.new_seed + 1} seeds"

    timings = {}
    clock = time.perf_counter()
    lm = load_model(cfg.harvest.model, device=cfg.device)
    layer = default_layer(cfg.harvest.model, lm.n_layers) if cfg.harvest.layer is None else cfg.harvest.layer
    cache = study_cache(cfg, lm, layer, out, progress=False)
    timings["harvest_s"] = time.perf_counter() - clock
    assert cache.manifest["fingerprint"] == before["cache"]["fingerprint"], "not experiment L's cache"

    clock = time.perf_counter()
    sae_dirs = train_missing(cache, cfg, out / "saes", progress=False, seeds={args.new_seed})
    timings["train_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    results = evaluate_all(sae_dirs, lm, layer, eval_contexts(cfg, lm), cfg, out / "evals", progress=False)
    timings["eval_s"] = time.perf_counter() - clock

    new = sae_records(results, named_members(cfg, cache.d_model), cfg.sae.arch)
    study = dict(before)
    study["config"] = to_dict(replace(cfg, harvest=replace(cfg.harvest, layer=layer)))
    study["saes"] = {**before["saes"], **new["saes"]}
    study["threshold_evals"] = {**before["threshold_evals"], **new["threshold_evals"]}
    study["training"] = {**before["training"], **training_results(sae_dirs)}
    study["timings"] = {**before["timings"], **{f"seed{args.new_seed}_{k}": v for k, v in timings.items()}}
    study.pop("sections", None)
    study.pop("summary", None)
    write_report(study, out / "report", sections=[threshold_section(study)])
    print(f"wrote {out / 'report'}; fold its results.json into {HERE / 'summary.json'} (scaffold_sae.summary)")
    print(format_summary_table(study["saes"]))
    print(json.dumps(timings))


if __name__ == "__main__":
    main()
