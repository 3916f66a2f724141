"""Analyses on SAEs a study (or `scaffold-sae train`) already saved, at other sample sizes than the study ran them:
the causal ablation table at 200 contexts, the redundancy curve, probing on 1,000 documents, ...

`analyse_saved(run, out, analyses, settings)` reads run/study_config.json (a study's settings; a flat config written
before the config tree is read through config.LEGACY), puts `settings` (keys of the config tree, e.g.
analyses.ce_tokens or analyses.ablation_table.ablation_operators) on top, packs the study's held-out contexts and
runs the named analyses on every SAE in run/saes/ against the plain SAE among them; PCA-deflation SAEs go along as
controls, as in the study (probing pairs each with the hybrid of its rank). It writes out/table.json (the
analyses as results.json stores them) and out/report/.

`scaffold-sae analyse RUN --out OUT --analyse ablation_table --analyses.ce_tokens 25600 ...` is its command line:
the flags are the study's config tree, and only the flags given replace the run's stored settings. An experiment
file's `analyse` steps call it too (scaffold_sae.experiments).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from scaffold_sae.config import LEGACY, ConfigError, build, lookup, nest
from scaffold_sae.fetch import atomic_write_text


@dataclass
class AnalyseRun:
    """`scaffold-sae analyse RUN`: which saved SAEs, which analyses, where to write."""

    run: str
    """A study's output folder (or an analyse step's): its study_config.json and saes/."""
    out: str
    """Folder for table.json and report/ (created)."""
    analyse: list[str] = field(default_factory=lambda: ["ablation_table"])
    """Registered analyses to run (structure, ablation_table, causality, redundancy, topic_ablation, probing, ...)."""
    eval_tokens: int | None = None
    """Held-out tokens to pack (more CE contexts than the study had); None: the run's harvest.eval_tokens."""
    progress: bool = True
    """Show progress bars."""


def flat_keys(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping's leaves by dotted key (``{"analyses": {"tokens": 8}}`` -> ``{"analyses.tokens": 8}``)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flat_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def analyse_command(values: Mapping[str, Any]) -> Path:
    """What `scaffold-sae analyse` does: the AnalyseRun fields from `values`, every other key (the study's config
    tree, only the flags given) on top of the run's stored settings; returns out/table.json."""
    run_keys = set(AnalyseRun.__dataclass_fields__)
    command = build(AnalyseRun, {k: v for k, v in values.items() if k in run_keys})
    if not (Path(command.run) / "study_config.json").is_file():
        raise ConfigError(f"{command.run}: no study_config.json; name a study's output folder (the --out of "
                          "`scaffold-sae study`, or runs/<slug>/ of an experiment)")
    settings = flat_keys({k: v for k, v in values.items() if k not in run_keys})
    stored = stored_study_config(json.loads((Path(command.run) / "study_config.json").read_text()))
    typed = build(type(stored), nest(settings), base=stored)  # fails here, before any model loads, on a bad value
    asked = {**asdict(command), **{key: lookup(typed, key) for key in settings}}
    analyse_saved(command.run, command.out, command.analyse, settings, command.eval_tokens,
                  progress=command.progress, command=asked, title="Analyses of saved SAEs")
    return Path(command.out) / "table.json"


def stored_study_config(stored: Mapping[str, Any]):
    """The StudyConfig of a study's stored study_config.json / results.json "config": the tree, or a flat config
    (pre-tree) whose keys config.LEGACY moves into the tree; keys that no longer exist are left out."""
    from scaffold_sae.study import StudyConfig

    if "harvest" in stored and isinstance(stored["harvest"], Mapping):
        return build(StudyConfig, stored)
    moved = {LEGACY[key]: value for key, value in stored.items() if key in LEGACY and value is not None}
    for key in ("seed", "device"):
        if key in stored:
            moved[key] = stored[key]
    return build(StudyConfig, nest(moved))


def analyse_saved(run: str | Path, out: str | Path, analyses: list[str], settings: Mapping[str, Any] | None = None,
                  eval_tokens: int | None = None, progress: bool = True, command: Mapping[str, Any] | None = None,
                  title: str = "Analyses") -> dict[str, Any]:
    """Run `analyses` (registered names) on the SAEs saved in run/saes/ and write out/table.json and out/report/;
    returns the table. `eval_tokens` packs that many held-out tokens instead of the study's (more CE contexts);
    `command` is recorded in the table (what was asked)."""
    from scaffold_sae.analyses import registered, run_analyses
    from scaffold_sae.corpus import load_corpus, pack_contexts
    from scaffold_sae.models import load_model
    from scaffold_sae.study_report import write_report
    from scaffold_sae.saving import load_sae
    from scaffold_sae.study import is_pca_deflation

    run, out = Path(run), Path(out)
    cfg = stored_study_config(json.loads((run / "study_config.json").read_text()))
    if settings:
        cfg = build(type(cfg), nest(settings), base=cfg)
    unknown = [name for name in analyses if name not in registered()]
    if unknown:
        raise ConfigError(f"unknown analyses {', '.join(unknown)}: choose from {', '.join(registered())}")
    saes = {p.name: load_sae(p) for p in sorted((run / "saes").iterdir()) if (p / "scaffold_sae.json").is_file()}
    controls = {name: saes.pop(name) for name in [n for n, sae in saes.items() if is_pca_deflation(sae.cfg)]}
    baseline = next((name for name, sae in saes.items() if sae.cfg.rank == 0), None)
    if baseline is None:
        raise ConfigError(f"{run / 'saes'} holds no plain SAE (rank 0) to analyse the others against")
    harvest = cfg.harvest
    lm = load_model(harvest.model)
    layer = harvest.layer
    contexts = pack_contexts(lm.tokenizer, load_corpus(harvest.corpus), harvest.ctx_len,
                             eval_tokens or harvest.eval_tokens, split="heldout", seed=cfg.seed, bos_id=lm.bos_token_id)
    chosen = {name: a for name, a in registered().items() if name in analyses}
    results, sections = run_analyses(lm, layer, saes, baseline, None, contexts, cfg, out=out, progress=progress,
                                     analyses=chosen, controls=controls)
    table = {"command": dict(command or {}), "contexts": list(contexts.shape), "analyses": results.to_json()}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "table.json", json.dumps(table, indent=1) + "\n")
    write_report({"title": f"{title}: {harvest.model} layer {layer}", "config": dict(command or {}), "saes": {}},
                 out / "report", sections=sections)
    return table


__all__ = ["AnalyseRun", "analyse_command", "analyse_saved", "flat_keys", "stored_study_config"]
