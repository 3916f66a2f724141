"""The study: harvest -> train a baseline and hybrids in lockstep -> evaluate at matched L0 -> report.

`scaffold-sae demo` is this study on the embedded default; `scaffold-sae study` runs it on any model.
Every stage reuses what an earlier run finished (the cache, saved SAEs, evaluations), so a rerun is cheap
and an interrupted one resumes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from scaffold_sae import archs, evals, faults
from scaffold_sae.analyses.runner import AnalysesConfig
from scaffold_sae.cache import DTYPES, ActivationCache, harvest
from scaffold_sae.config import build, lookup, setting, to_dict
from scaffold_sae.corpus import load_corpus, pack_contexts
from scaffold_sae.devices import resolve_device
from scaffold_sae.faults import OutputLock
from scaffold_sae.fetch import atomic_write_text
from scaffold_sae.models import EMBEDDED, load_model
from scaffold_sae.plan import ClaimsPlan, plan_status, stored_plan, write_plan
from scaffold_sae.sae import ConfigError, SAEConfig
from scaffold_sae.saving import load_sae
from scaffold_sae.trainer import TrainConfig, train_saes


EXTRA_BASELINES = ("pca_deflation", "capacity_matched", "other_encoder")
"""The comparisons a study can train besides the plain SAE ("baseline") and the hybrids ("hybrid")."""


@dataclass
class StudyMember:
    """One SAE of a study: its role, its seed index (0 .. seeds - 1) and its config."""

    kind: str
    """baseline | hybrid | pca_deflation | capacity_matched | other_encoder."""
    seed: int
    cfg: SAEConfig
    for_rank: int
    """The hybrid rank it is compared at (0 for the plain SAE)."""


@dataclass
class StudyHarvest:
    """What the study runs on: the model, the layer, the corpus, and the tokens it harvests and evaluates on."""

    model: str = "gemma3-270m"
    """Language model: an embedded key (gemma3-270m, smollm2-135m), a hub id, a local dir or a .gguf file."""
    layer: int | None = None
    """Residual stream after this block; None = the embedded model's default (middle) layer or n_layers // 2."""
    corpus: str = "news"
    """Text: news (embedded), a local .txt/.jsonl/.parquet file or folder, or hf:name[:config][:split]."""
    ctx_len: int = 128
    """Tokens per context (each starts with BOS)."""
    train_tokens: int = 200_000
    """Unique training tokens harvested into the activation cache (BOS and sink tokens excluded)."""
    eval_tokens: int = 16_384
    """Held-out tokens for reconstruction and density statistics (never seen in training)."""
    ce_tokens: int = 1_024
    """Held-out tokens (a prefix of the eval contexts) for the spliced CE / KL numbers (a full LM forward each)."""
    sink_factor: float = 10.0
    """Exclude tokens whose activation norm exceeds this multiple of the median (attention sinks)."""
    batch_size: int = 8
    """Contexts per LM forward while harvesting and evaluating."""
    cache_dir: str | None = None
    """Activation cache directory (default <out>/cache); point several studies at one cache to share it."""
    dtype: str = "float32"
    """How the cache stores activations: float32, or float16 (half the disk; read back as float32)."""


@dataclass
class StudySAEs(SAEConfig):
    """The study's SAEs: the SAEConfig fields they all share (each SAE's rank and seed come from ranks and seeds,
    d_in from the model), and which SAEs to train."""

    ranks: list[int] = field(default_factory=lambda: [0, 2, 4, 8, 16, 24, 32])
    """Scaffold ranks; 0 is the baseline. All train in lockstep on the same batches."""
    seeds: int = 1
    """Initialisation seeds per SAE (seed, seed + 1, ...), all trained in lockstep on the same batches; tables show
    mean +- sd over seeds. With 1 the SAE names carry no seed suffix."""
    baselines: str = ""
    """Comma-separated extra baselines, each trained next to the hybrids at every hybrid rank r:
    pca_deflation (the plain SAE on x with the top-r PCs projected out: a frozen tied PCA scaffold, residual encoder),
    capacity_matched (a plain SAE with k + r active latents), other_encoder (the hybrids with the other
    encoder_input). Empty: only the plain SAE at rank 0."""

    def baseline_kinds(self) -> list[str]:
        return [b.strip() for b in self.baselines.split(",") if b.strip()]


@dataclass
class StudyBrowse:
    """The feature-browser sites the study writes."""

    enabled: bool = True
    """Write feature-browser sites (scaffold-sae browse) for seed 0's baseline and the analysis hybrid into
    <out>/browse/<sae>/; the report links to them. The hybrid's site lists the baseline latents its scaffold
    absorbed."""
    tokens: int = 4_096
    """Held-out tokens the browser sites pass over (a prefix of the eval contexts, at most harvest.eval_tokens); each
    site is one LM forward over them up to the layer."""


@dataclass
class StudyConfig:
    """One study: a model, a layer, a baseline SAE and hybrids at several scaffold ranks, trained in lockstep,
    evaluated at matched L0, analysed and reported. A tree: each section below is its own dataclass."""

    harvest: StudyHarvest = field(default_factory=StudyHarvest)
    """The model, layer, corpus and token budgets."""
    sae: StudySAEs = field(default_factory=lambda: StudySAEs(width=2048),
                           metadata={"omit": {"d_in": "the model's width", "rank": "sae.ranks",
                                                     "seed": "seed with sae.seeds"}})
    """The SAEs: the settings they share and which ranks, seeds and extra baselines to train."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(tokens=1_228_800),
                               metadata={"omit": {"seed": "the study's seed", "device": "the study's device",
                                                       "progress": "--no-progress"}})
    """The lockstep training run (its seed and device are the study's; progress is `--no-progress`). With
    until_converged, tokens is the most training may use."""
    analyses: AnalysesConfig = field(default_factory=AnalysesConfig)
    """The scaffold analyses: their shared settings and one section per analysis."""
    browse: StudyBrowse = field(default_factory=StudyBrowse)
    """The feature-browser sites."""
    claims: ClaimsPlan = field(default_factory=lambda: ClaimsPlan(seeds=1))
    """The claims plan: each claim's primary reading and decision rule, written to plan.json before anything trains
    (docs/claims.md). Its seeds are at most sae.seeds."""
    device: str = "cpu"
    """torch device for the model and the SAEs: cpu | cuda | cuda:N | auto (a GPU when there is one)."""
    seed: int = 0
    """Seed for data order and initialisation."""

    def validate(self) -> "StudyConfig":
        h, sae, analyses = self.harvest, self.sae, self.analyses
        if not sae.ranks or 0 not in sae.ranks:
            raise ConfigError(f"sae.ranks={sae.ranks} is invalid: include 0 (the baseline), e.g. 0,8,24")
        if sorted(set(sae.ranks)) != sorted(sae.ranks) or min(sae.ranks) < 0:
            raise ConfigError(f"sae.ranks={sae.ranks} is invalid: distinct non-negative integers")
        for path in ("harvest.ctx_len", "harvest.train_tokens", "harvest.eval_tokens", "harvest.ce_tokens",
                     "sae.width", "sae.k", "train.tokens", "train.batch_size"):
            if lookup(self, path) < 1:
                raise ConfigError(f"{path}={lookup(self, path)} is invalid: must be a positive integer")
        if h.dtype not in DTYPES:
            raise ConfigError(f"harvest.dtype={h.dtype!r} is invalid: allowed values are {', '.join(DTYPES)}")
        if h.ce_tokens // h.ctx_len >= h.eval_tokens // h.ctx_len:
            raise ConfigError(f"harvest.ce_tokens={h.ce_tokens} is invalid: must leave at least one eval context "
                              f"({h.ctx_len} tokens) beyond it in harvest.eval_tokens ({h.eval_tokens}), where the "
                              "mean-ablation mean is fitted; raise harvest.eval_tokens")
        if self.browse.enabled and self.browse.tokens < 1:
            raise ConfigError(f"browse.tokens={self.browse.tokens} is invalid: must be a positive integer (or set "
                              "browse.enabled to false)")
        if archs.get(sae.arch).uses_k and sae.k > sae.width:   # before the harvest, not after it
            raise ConfigError(f"sae.k={sae.k} is invalid: k must be in 1..sae.width ({sae.width})")
        if sae.seeds < 1:
            raise ConfigError(f"sae.seeds={sae.seeds} is invalid: must be a positive integer")
        if not 1 <= analyses.seeds <= sae.seeds:
            raise ConfigError(f"analyses.seeds={analyses.seeds} is invalid: between 1 and sae.seeds ({sae.seeds}); "
                              f"raise sae.seeds to train that many")
        if self.claims.seeds > sae.seeds:
            raise ConfigError(f"claims.seeds={self.claims.seeds} is invalid: the plan cannot read more seeds than the "
                              f"study trains (sae.seeds={sae.seeds}); raise sae.seeds or lower claims.seeds")
        if analyses.bootstrap_samples < 1:
            raise ConfigError(f"analyses.bootstrap_samples={analyses.bootstrap_samples} is invalid: the intervals of "
                              "the analyses need at least one resample, e.g. 2000")
        probing = analyses.probing
        if probing.probe_splits < 1 or not probing.probe_ks or min(probing.probe_ks) < 1:
            raise ConfigError(f"analyses.probing.probe_splits={probing.probe_splits}, analyses.probing.probe_ks="
                              f"{probing.probe_ks} are invalid: at least one split and positive k values, e.g. "
                              "probe_splits 5, probe_ks 1,2,5,10,20")
        unknown = [b for b in sae.baseline_kinds() if b not in EXTRA_BASELINES]
        if unknown:
            raise ConfigError(f"sae.baselines={sae.baselines!r} is invalid: {', '.join(unknown)} unknown; choose from "
                              f"{', '.join(EXTRA_BASELINES)} (comma-separated)")
        self.train_config().validate()
        return self

    def members(self) -> list[StudyMember]:
        """Every SAE of the study with its role and seed index: per seed, the plain SAE and the hybrids, then the
        extra baselines at each hybrid rank."""
        out = []
        sae = self.sae
        shared = {f.name: getattr(sae, f.name) for f in fields(SAEConfig) if f.name not in ("d_in", "rank", "seed")}
        # what every SAE of the study shares, whatever its role: the sparse dictionary
        dictionary = {k: v for k, v in shared.items() if not k.startswith("scaffold_") and k not in ("k",
                                                                                                    "encoder_input")}
        hybrid_ranks = [r for r in sae.ranks if r > 0]
        extras = sae.baseline_kinds()
        other_input = "x" if sae.encoder_input == "residual" else "residual"
        for i in range(sae.seeds):
            seed = None if sae.seeds == 1 else self.seed + i
            for r in sae.ranks:
                out.append(StudyMember("baseline" if r == 0 else "hybrid", i, SAEConfig(**shared, rank=r, seed=seed),
                                       r))
            for r in hybrid_ranks:
                if "pca_deflation" in extras:  # is_pca_deflation recognises it from its config
                    out.append(StudyMember("pca_deflation", i, SAEConfig(
                        **dictionary, k=sae.k, rank=r, scaffold_init="pca", scaffold_tied=True, scaffold_lr_mult=0.0,
                        encoder_input="residual", seed=seed), r))
                if "capacity_matched" in extras:  # encoder_input x: no scaffold, and the name it always had
                    out.append(StudyMember("capacity_matched", i, SAEConfig(
                        **dictionary, k=sae.k + r, rank=0, encoder_input="x", seed=seed), r))
                if "other_encoder" in extras:
                    out.append(StudyMember("other_encoder", i, SAEConfig(
                        **{**shared, "encoder_input": other_input}, rank=r, seed=seed), r))
        return out

    def sae_configs(self) -> list[SAEConfig]:
        return [member.cfg for member in self.members()]

    def train_config(self) -> TrainConfig:
        """The training run: the train section, with the study's seed and device."""
        return replace(self.train, seed=self.seed, device=self.device)


# The demo is the default study: sized to finish in under 30 minutes on 2 CPU cores from an empty cache, at the
# regime where the effect shows on Gemma-3-270M (results/RESULTS.md says what was tried).
DEMO = build(StudyConfig, {
    "analyses.ablation_table": {"ablation_operators": "zero", "ablation_positions": "ordinary",
                                "ablation_subjects": "scaffold,pca,pca_mean,mean,random", "ablation_splices": False},
    "analyses.redundancy.redundancy_points": 1,
    "analyses.topic_ablation": {"topic_datasets": "bbc_topic", "topic_operators": "zero", "topic_positions": "ordinary",
                                "topic_read_after": "0,last"}})
"""`scaffold-sae demo`: the study's defaults with the analyses cut to the claims plan's primary readings and their
controls (zero ablation at ordinary positions of the scaffold, the top PCs, span[PCs, mean], the mean and 10 random
bases; the redundancy ratio at the paper's share only; the topic probe on BBC topic at the ablated layer and the last
block), so that it runs in under 30 minutes on 2 CPU cores. Its causal and redundancy readings rest on 4 CE
contexts, so those rows say undecided (at least 30 units needed)."""


def is_pca_deflation(cfg: SAEConfig) -> bool:
    """Whether an SAE's config is the study's PCA-deflation control (StudyConfig.members builds it: a frozen
    (lr x0), tied, PCA-initialised scaffold), e.g. for SAEs read back from a folder."""
    return bool(cfg.rank and cfg.scaffold_tied and cfg.scaffold_lr_mult == 0 and cfg.scaffold_init == "pca")


def default_layer(model_spec: str, n_layers: int) -> int:
    return EMBEDDED[model_spec].default_layer if model_spec in EMBEDDED else n_layers // 2


def run_study(cfg: StudyConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Run (or resume) the whole study into out_dir; returns the results dict written to results.json."""
    with OutputLock(out_dir, "study", disposable=("plan.json", "study_config.json")):
        return _run_study(cfg, out_dir, progress)


def _run_study(cfg: StudyConfig, out_dir: str | Path, progress: bool) -> dict:
    cfg = replace(cfg.validate(), device=str(resolve_device(cfg.device)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_plan(out, cfg.claims)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    lm = load_model(cfg.harvest.model, device=cfg.device)
    layer = default_layer(cfg.harvest.model, lm.n_layers) if cfg.harvest.layer is None else cfg.harvest.layer
    lm.check_layer(layer)
    resolved = to_dict(replace(cfg, harvest=replace(cfg.harvest, layer=layer)))
    atomic_write_text(out / "study_config.json", json.dumps(resolved, indent=1) + "\n")
    timings["load_model_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    cache = study_cache(cfg, lm, layer, out, progress)
    timings["harvest_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    sae_dirs = train_missing(cache, cfg, out / "saes", progress)
    members = named_members(cfg, cache.d_model)
    timings["train_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    faults.progress("stage", "evaluation")
    contexts = eval_contexts(cfg, lm)
    results = evaluate_all(sae_dirs, lm, layer, contexts, cfg, out / "evals", progress)
    timings["eval_s"] = time.perf_counter() - clock

    points = []
    if cfg.train.snapshot_every:
        clock = time.perf_counter()
        faults.progress("stage", "curves")
        points = study_curves(sae_dirs, lm, layer, contexts, cfg, out / "curves.json", progress)
        timings["curves_s"] = time.perf_counter() - clock

    sites: dict[str, str] = {}
    if cfg.browse.enabled:
        clock = time.perf_counter()
        faults.progress("stage", "browse")
        sites = browse_sites(sae_dirs, members, lm, layer, contexts, cfg, out / "browse", progress)
        timings["browse_s"] = time.perf_counter() - clock

    analyses, seed_analyses = {}, {}
    if cfg.analyses.enabled:
        clock = time.perf_counter()
        per_seed = []
        for seed in range(cfg.analyses.seeds):
            faults.progress("stage", "analyses" if cfg.analyses.seeds == 1 else f"analyses, seed {seed}")
            where = out if seed == 0 else out / f"analyses_seed{seed}"
            per_seed.append(analyses_of_seed(seed, members, sae_dirs, lm, layer, cache, contexts, cfg, where,
                                             progress))
        analyses, seed_analyses = per_seed[0], {str(seed): data for seed, data in enumerate(per_seed) if seed}
        timings["analyses_s"] = time.perf_counter() - clock

    return {
        "title": f"scaffold-sae study: {cfg.harvest.model} layer {layer}",
        "config": resolved,
        "plan": (stored_plan(out) or cfg.claims).to_json(),
        "plan_status": plan_status(out, cfg.claims),
        "inference": archs.get(cfg.sae.arch).primary_inference,
        "cache": {k: cache.manifest.get(k) for k in ("model", "fingerprint", "layer", "n_rows", "excluded")},
        **sae_records(results, members, cfg.sae.arch),
        "training": training_results(sae_dirs),
        "timings": timings,
        "analyses": analyses,
        **({"seed_analyses": seed_analyses} if seed_analyses else {}),
        **({"curves": points} if points else {}),
        "browse": sites,
    }


def study_curves(sae_dirs: dict[str, Path], lm, layer: int, contexts: torch.Tensor, cfg: StudyConfig, path: Path,
                 progress: bool) -> list[dict]:
    """Every SAE's snapshots measured on the study's held-out contexts (scaffold_sae.curves), kept in ``path`` and
    reused while the set of (SAE, step) is unchanged."""
    from scaffold_sae import curves

    wanted = sorted([name, step] for name, d in sae_dirs.items() for step, _, _ in curves.snapshots(d))
    if path.is_file():
        kept = json.loads(path.read_text())
        if sorted([p["sae"], p["step"]] for p in kept) == wanted:
            return kept
    n_ce = max(1, cfg.harvest.ce_tokens // cfg.harvest.ctx_len)
    points = curves.to_json(curves.measure(sae_dirs, lm, layer, contexts, n_ce, batch_size=cfg.harvest.batch_size,
                                           progress=progress))
    atomic_write_text(path, json.dumps(points, indent=1) + "\n")
    return points


def study_cache(cfg: StudyConfig, lm, layer: int, out: Path, progress: bool) -> ActivationCache:
    """The study's activation cache in harvest.cache_dir (default out/cache): harvested, or reused when it is
    complete."""
    h = cfg.harvest
    cache_dir = Path(h.cache_dir) if h.cache_dir else out / "cache"
    return harvest(lm, layer, h.corpus, h.train_tokens, cache_dir, ctx_len=h.ctx_len, batch_size=h.batch_size,
                   split="train", dtype=h.dtype, sink_factor=h.sink_factor, seed=cfg.seed, progress=progress)


def eval_contexts(cfg: StudyConfig, lm) -> torch.Tensor:
    """The held-out contexts every evaluation and analysis of the study uses (never in the training cache)."""
    h = cfg.harvest
    return pack_contexts(lm.tokenizer, load_corpus(h.corpus), h.ctx_len, h.eval_tokens, split="heldout",
                         seed=cfg.seed, bos_id=lm.bos_token_id)


def sae_records(results: dict[str, dict], members: dict[str, StudyMember], arch: str) -> dict[str, dict]:
    """results.json's "saes" (at matched L0) and "threshold_evals" (JumpReLU) entries: each SAE's evaluation with its
    place in the study."""
    primary = archs.get(arch).primary_inference
    return {"saes": {name: {**result[primary], **member_keys(members[name])} for name, result in results.items()},
            "threshold_evals": {name: {**result["threshold"], **member_keys(members[name])}
                                for name, result in results.items()}}


def analyses_of_seed(seed: int, members: dict[str, StudyMember], sae_dirs: dict[str, Path], lm, layer: int, cache,
                     contexts: torch.Tensor, cfg: StudyConfig, out: Path, progress: bool) -> dict:
    """The analyses (as results.json stores them) of one seed's plain SAE and hybrids, cached in out/analyses.json; the
    PCA-deflation SAEs go along as controls (probing pairs them with the hybrids), the other extra baselines are
    compared in the tables, not here."""
    from scaffold_sae.analyses import run_analyses

    chosen = [name for name, m in members.items() if m.seed == seed and m.kind in ("baseline", "hybrid")]
    saes = {name: load_sae(sae_dirs[name]).to(cfg.device) for name in chosen}
    baseline = next(name for name in chosen if members[name].kind == "baseline")
    out.mkdir(parents=True, exist_ok=True)
    controls = {name: load_sae(sae_dirs[name]).to(cfg.device) for name, m in members.items()
                if m.seed == seed and m.kind == "pca_deflation"}
    typed, _ = run_analyses(lm, layer, saes, baseline, cache, contexts, cfg, out=out, progress=progress,
                            controls=controls)
    return typed.to_json()


def training_results(sae_dirs: dict[str, Path]) -> dict[str, dict]:
    """Per SAE: how its training ended (steps, budget, stop reason, convergence step, final held-out FVU, from its
    saved summary), its last log window (L0, FVU, dead and dense>10% latents) and its curves (log-window loss and
    held-out FVU against tokens, from train_log.jsonl). An SAE linked from another run (a symlink) is found in that
    run's log under the name it was trained with."""
    from scaffold_sae.trainer import LOG, read_log

    trained = {name: Path(directory).resolve() for name, directory in sae_dirs.items()}
    records: dict[Path, list[dict]] = {}
    for where in trained.values():
        if where.parent not in records:
            log = where.parent / LOG
            records[where.parent] = read_log(log) if log.is_file() else []
    out = {}
    for name, directory in sae_dirs.items():
        summary = json.loads((Path(directory) / "scaffold_sae.json").read_text()).get("summary", {})
        mine = [r for r in records[trained[name].parent] if r.get("sae") == trained[name].name]
        window = [r for r in mine if "loss" in r]
        held = [r for r in mine if "heldout_fvu" in r]
        out[name] = {**{key: summary.get(key) for key in ("steps", "max_steps", "tokens", "stop_reason",
                                                            "converged_step", "heldout_fvu")},
                     "last_window": {key: window[-1].get(key) for key in ("step", "l0", "fvu", "dead", "dense")}
                     if window else None,
                     "curve": {"tokens": [r["tokens"] for r in window], "loss": [r["loss"] for r in window]},
                     "heldout": {"tokens": [r["tokens"] for r in held], "fvu": [r["heldout_fvu"] for r in held]}}
    return out


def training_table(training: dict[str, dict]) -> str:
    """What `scaffold-sae train` prints at the end: per SAE its last training window (L0, FVU, dead, dense>10%),
    its held-out FVU when measured, and how training ended (from training_results; no extra pass over data)."""
    from scaffold_sae.report import format_number

    header = ["sae", "L0", "FVU", "dead", "dense>10%", "held-out FVU", "steps", "ended"]
    rows = []
    for name, run in training.items():
        last = run.get("last_window") or {}
        rows.append([name, *(format_number(last.get(key)) for key in ("l0", "fvu", "dead", "dense")),
                     format_number(run.get("heldout_fvu")) if run.get("heldout_fvu") is not None else "-",
                     f"{run.get('steps')}/{run.get('max_steps')}", run.get("stop_reason") or "-"])
    widths = [max(len(str(line[i])) for line in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) if i == 0 else str(cell).rjust(w) for i, (cell, w) in
                       enumerate(zip(line, widths))) for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + ["L0, FVU and dense>10%: the last log window of training (training batches); dead: "
                               "latents silent for dead_tokens. `scaffold-sae eval --sae DIR` measures held-out text."])


def threshold_section(study: dict):
    """The exported JumpReLU thresholds at work: inference L0 and FVU next to the matched-L0 numbers."""
    from scaffold_sae.report import Section, Table

    rows = []
    for name, ev in study["threshold_evals"].items():
        matched = study["saes"][name]
        rows.append([name, ev["rank"], matched["l0"], ev["l0"], matched["fvu"], ev["fvu"], matched["dense_10"],
                     ev["dense_10"], ev["ce_score_zero"]])
    rows.sort(key=lambda row: (row[1], row[0]))
    table = Table(columns=["SAE", "rank", "L0 batch top-k", "L0 JumpReLU", "FVU batch top-k", "FVU JumpReLU",
                           "dense>10% batch top-k", "dense>10% JumpReLU", "CE score JumpReLU"], rows=rows,
                  caption="Exported JumpReLU threshold vs batch top-k inference on the same held-out tokens")
    return Section(title="Inference threshold (JumpReLU export)",
                   text="The main tables compare SAEs at exactly matched L0 (batch top-k over each evaluation "
                        "batch). This table shows each SAE with the JumpReLU threshold it is saved with, the way "
                        "SAELens and SAEBench will run it.", tables=[table])


def browse_sites(sae_dirs: dict[str, Path], members: dict[str, StudyMember], lm, layer: int,
                 contexts: torch.Tensor, cfg: StudyConfig, out: Path, progress: bool) -> dict[str, str]:
    """Browser sites for seed 0's baseline and the analysis hybrid (`analyses.primary_hybrid`: analyses.rank, else
    the largest rank), each written to a temporary folder and renamed to out/<name>, so a site that exists is
    complete; a rerun reuses a site built from the same SAE, baseline and contexts. Returns {name: the path of its
    index.html relative to the study's folder}."""
    import shutil

    from scaffold_sae.analyses.base import AnalysisError, primary_hybrid
    from scaffold_sae.analyses.runner import contexts_digest, sae_fingerprint
    from scaffold_sae.browse import BrowseConfig, build_site

    chosen = {name: m for name, m in members.items() if m.seed == 0 and m.kind in ("baseline", "hybrid")}
    base_name = next(name for name, m in chosen.items() if m.kind == "baseline")
    try:
        names = [base_name, primary_hybrid(chosen, cfg.analyses.rank)]
    except AnalysisError:  # no hybrid: the baseline's site only
        names = [base_name]
    contexts = contexts[:browse_contexts(cfg.browse.tokens, cfg.harvest.eval_tokens, cfg.harvest.ctx_len)]
    browse_cfg = BrowseConfig(batch_size=cfg.harvest.batch_size, sink_factor=cfg.harvest.sink_factor,
                              progress=progress)
    baseline = load_sae(sae_dirs[base_name]).to(cfg.device).eval()
    sites = {}
    for name in names:
        sae = baseline if name == base_name else load_sae(sae_dirs[name]).to(cfg.device).eval()
        against = None if name == base_name else baseline
        key = {"sae": sae_fingerprint(sae), "baseline": None if against is None else sae_fingerprint(against),
               "contexts": contexts_digest(contexts), "config": asdict(replace(browse_cfg, progress=False))}
        site = out / name
        if not _site_matches(site, key):
            tmp = out / f".{name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            build_site(sae, lm, layer, contexts, tmp, browse_cfg, baseline=against,
                       meta={"sae": name, "baseline": None if against is None else base_name, "study_key": key})
            shutil.rmtree(site, ignore_errors=True)
            tmp.rename(site)
        sites[name] = (site / "index.html").relative_to(out.parent).as_posix()
    return sites


def browse_contexts(browse_tokens: int, eval_tokens: int, ctx_len: int) -> int:
    """How many of the eval contexts the browser sites pass over."""
    return max(1, min(browse_tokens, eval_tokens) // ctx_len)


def _site_matches(site: Path, key: dict) -> bool:
    try:
        return json.loads((site / "site.json").read_text())["meta"].get("study_key") == key
    except (OSError, ValueError, KeyError):
        return False


def browse_section(study: dict, study_dir: str | Path, report_dir: str | Path):
    """Links from the report (in report_dir) to the study's browser sites (study['browse'], relative to
    study_dir); None when the study wrote none."""
    import os

    from scaffold_sae.report import Section

    sites = study.get("browse") or {}
    if not sites:
        return None
    config = study["config"]
    ctx_len = setting(config, "harvest.ctx_len")
    n = browse_contexts(setting(config, "browse.tokens"), setting(config, "harvest.eval_tokens"), ctx_len)
    links = []
    for name, index in sites.items():
        kind = study["saes"].get(name, {}).get("kind", "")
        rank = study["saes"].get(name, {}).get("rank", 0)
        label = f"{name} ({kind}, rank {rank})" if kind else name
        links.append([label, Path(os.path.relpath(Path(study_dir) / index, report_dir)).as_posix()])
    return Section("Feature browser", "A static site per SAE (open from disk): every latent's density, top contexts, "
                   "activation histogram and logit effects; the hybrid's site also shows each scaffold direction and "
                   f"the baseline's dense latents it absorbed. Written from the first {n} held-out contexts of "
                   f"{ctx_len} tokens (browse.tokens).", links=links)


def named_members(cfg: StudyConfig, d_model: int) -> dict[str, StudyMember]:
    """The study's SAEs by the directory name the trainer gives them."""
    from scaffold_sae.trainer import resolve_configs, sae_names

    members = cfg.members()
    names = sae_names(resolve_configs([m.cfg for m in members], d_model))
    return dict(zip(names, members))


def member_keys(member: StudyMember) -> dict:
    """What results.json records of an SAE's place in the study next to its evaluation."""
    return {"kind": member.kind, "seed": member.seed, "for_rank": member.for_rank, "k": member.cfg.k,
            "encoder_input": member.cfg.encoder_input}


def train_missing(cache: ActivationCache, cfg: StudyConfig, out: Path, progress: bool,
                  seeds: set[int] | None = None) -> dict[str, Path]:
    """Train (in lockstep) the study's SAEs that are not saved yet, only those of the given seed indices when seeds
    is set; returns name -> directory for all of them. A run stopped while saving (some SAEs saved, its checkpoint
    still there) is resumed whole: the checkpoint holds every SAE, so a subset would not match it, and
    until_converged stops them all together."""
    from scaffold_sae.trainer import CHECKPOINT, sae_names, resolve_configs

    every = resolve_configs(cfg.sae_configs(), cache.d_model)
    keep = [seeds is None or m.seed in seeds for m in cfg.members()]
    cfgs = [c for c, k in zip(every, keep) if k]
    names = [n for n, k in zip(sae_names(every), keep) if k]
    missing = [c for c, n in zip(cfgs, names) if not (out / n / "scaffold_sae.json").exists()]
    if missing and (out / CHECKPOINT).exists():
        missing = cfgs
    if missing:
        train_cfg = cfg.train_config()
        train_cfg.progress = progress
        train_saes(cache, missing, train_cfg, out)
    return {n: out / n for n in names}


MEAN_FIT = "eval contexts after the CE prefix"
"""Where the mean-ablation mean of the CE score comes from. Eval records without it (before 2026-11-28) fitted the
mean on the CE contexts themselves and are recomputed."""


def _current_eval(path: Path) -> bool:
    """A cached eval record exists and was computed with the current mean-ablation rule."""
    try:
        return json.loads(path.read_text()).get("mean_fit") == MEAN_FIT
    except (OSError, ValueError):
        return False


def evaluate_all(sae_dirs: dict[str, Path], lm, layer: int, contexts: torch.Tensor, cfg: StudyConfig,
                 out: Path, progress: bool) -> dict[str, dict]:
    """Evaluate every SAE at matched L0 (batch top-k inference for BatchTopK SAEs) and with its exported
    JumpReLU threshold; cached per SAE in out/<name>.json."""
    out.mkdir(parents=True, exist_ok=True)
    pending = {n: d for n, d in sae_dirs.items() if not _current_eval(out / f"{n}.json")}
    if pending:
        saes = {n: load_sae(d).to(cfg.device) for n, d in pending.items()}
        n_ce = max(1, cfg.harvest.ce_tokens // cfg.harvest.ctx_len)
        modes = list(archs.get(cfg.sae.arch).inference_modes)
        if contexts.shape[0] <= n_ce:
            raise ConfigError(f"harvest.ce_tokens={cfg.harvest.ce_tokens} uses all {contexts.shape[0]} eval contexts, "
                              "leaving none to fit the mean-ablation mean on: raise harvest.eval_tokens above "
                              "harvest.ce_tokens")
        runs = {f"{name}@{mode}": sae for name, sae in saes.items() for mode in modes}
        results = evals.evaluate_many(runs, lm, layer, contexts, ce_contexts=n_ce,
                                      inference={run: run.split("@")[1] for run in runs},
                                      batch_size=cfg.harvest.batch_size, progress=progress,
                                      sink_factor=cfg.harvest.sink_factor)  # mean fitted on contexts[n_ce:] (MEAN_FIT)
        for name in saes:
            record = {"rank": saes[name].cfg.rank, "dir": str(sae_dirs[name]), "mean_fit": MEAN_FIT,
                      **{mode: asdict(results[f"{name}@{mode}"]) for mode in modes}}
            atomic_write_text(out / f"{name}.json", json.dumps(record) + "\n")
    return {n: json.loads((out / f"{n}.json").read_text()) for n in sae_dirs}


@dataclass
class StudyRun:
    """Where `scaffold-sae study` / `demo` write, beside the StudyConfig tree."""

    out: str | None = None
    """Output directory (default runs/<model>-L<layer>; runs/demo for the demo)."""
    progress: bool = True
    """Show progress bars."""


def study_and_report(cfg: StudyConfig, out: str | Path, progress: bool = True):
    """Run the study into ``out``, write its report into ``out/report`` and print the summary table; returns the
    report's paths."""
    from scaffold_sae.report import format_summary_table
    from scaffold_sae.study_report import write_report

    study = run_study(cfg, out, progress=progress)
    report_dir = Path(out) / "report"
    extra = [threshold_section(study), browse_section(study, out, report_dir)]
    paths = write_report(study, report_dir, sections=[s for s in extra if s is not None])
    print(format_summary_table(study["saes"]))
    return paths
