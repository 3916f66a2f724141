"""Diagnose an existing SAE (ours, SAELens or sparsify, anything `load_sae` reads): how much scaffold do its dense
latents carry, and would a scaffold remove them?

Definitions (one place):
- Statistics use held-out residual rows at the `lm_passes.eval_mask` positions and the SAE's own inference encoder
  (`evals.reconstruct(..., "threshold")`); dense at 10% / 1% means firing on more than that share (as in `evals`).
- Top PCs: the top `rank` principal directions of those rows; massive dims: `subspace.outlier_dims`. Alignment of
  a decoder row with a subspace is `subspace.alignment_scores`.
- Antipodal pair: two dense (>1%) latents whose decoder rows have cosine below `antipodal_cos`.
- recon_pc_share: share of the centred variance of the reconstruction x_hat in the top-PC subspace;
  dense_pc_share: share of the energy (uncentred) of the dense latents' summed output in it; data_pc_share: the
  same as recon_pc_share for x itself, for reference.
- The fit (`fit`), both at the same training budget (`train_tokens` tokens of the train split, harvested from the
  model) and with the encoder seeing `encoder_input`:
  finetune: the SAE's own weights, fine-tuned twice in lockstep on the same batches, without a scaffold (the
  control: what fine-tuning alone does) and with a rank-`rank` scaffold (`finetune.py`: U = V = the top-`rank`
  PCs of the training sample around b_dec); fresh: a fresh plain SAE and a fresh rank-`rank` hybrid of the same
  width and sparsity, trained alike.
- Matched L0 across the three rows (the SAE as given, without and with a scaffold): a trainable k-sparse SAE
  (batchtopk, matryoshka, topk) keeps its arch and k, and a fine-tuned batchtopk / matryoshka threshold is set to
  give L0 = k on a training sample (as the trainer does); any other SAE (JumpReLU, ReLU) has no k, so the fit uses
  batchtopk with k = its measured held-out L0, rounded (a JumpReLU SAE's fine-tune starts from its own per-latent
  thresholds, so its codes at the start equal the loaded SAE's). Every row is measured with its own inference rule
  (the SAE as given: its own; fitted ones: the calibrated threshold, or top-k per token for topk), so L0 is matched
  up to the rounding of k and the threshold's calibration on training tokens; each row reports the L0 it reached.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from scaffold_sae import archs
from scaffold_sae.evals import DENSE, dense_count, firing_density, reconstruct
from scaffold_sae.subspace import alignment_scores, outlier_dims, pca, variance_share
from scaffold_sae.source import SAESource


@dataclass
class DiagnoseConfig:
    """What `diagnose` measures and fits."""

    tokens: int = 16384
    """Held-out tokens for the statistics."""
    rank: int = 8
    """Rank of the PC subspace and of the scaffold fitted for comparison."""
    fit: str = "finetune"
    """How the scaffold is fitted: finetune (the SAE's own weights fine-tuned without and with a rank-`rank`
    scaffold) or fresh (a fresh plain SAE and a fresh hybrid of the same width and k)."""
    train_tokens: int = 262144
    """Tokens of the corpus's train split for the fit (0 skips the fit)."""
    encoder_input: str = "residual"
    """What the fitted hybrid's sparse encoder sees: residual (x minus the scaffold's output) or x."""
    ctx_len: int = 128
    """Context length (each starts with BOS)."""
    batch_size: int = 8
    """Contexts per forward."""
    train_batch_size: int = 1024
    """Tokens per training step of the fit."""
    antipodal_cos: float = -0.9
    """Two dense latents are antipodal when their decoder rows' cosine is below this."""
    massive_factor: float = 10.0
    """A dim is massive when its mean |x| exceeds this multiple of the median dim's."""
    progress: bool = True
    """Progress bars."""


@dataclass
class DenseLatent:
    latent: int
    density: float
    align_pcs: float
    """||Q^T w||^2 / ||w||^2 with Q the top PCs."""
    align_massive: float | None
    """Share of ||w||^2 on the massive dims (None when there are none)."""


@dataclass
class DensityCounts:
    """Dense latents of one SAE at its own inference rule."""

    l0: float
    fvu: float
    dense_10: int
    dense_1: int


FITS = ("finetune", "fresh")


class DiagnoseError(ValueError):
    """A diagnosis that cannot run as asked."""


@dataclass
class ScaffoldFit:
    """Would a scaffold remove the dense latents: the SAE as given, then two SAEs trained alike at matched L0,
    without and with a scaffold (the SAE fine-tuned, or fresh ones)."""

    mode: str
    """finetune | fresh."""
    arch: str
    width: int
    k: int
    rank: int
    train_tokens: int
    matched_l0: str
    """How L0 is matched across the rows."""
    before: DensityCounts
    """The SAE as given, at its own inference rule."""
    plain: DensityCounts
    """Fine-tuned without a scaffold (finetune) or a fresh plain SAE (fresh)."""
    scaffold: DensityCounts
    """Fine-tuned with a rank-`rank` scaffold (finetune) or a fresh hybrid (fresh)."""


@dataclass
class Diagnosis:
    """Everything `diagnose` reports (serialise with dataclasses.asdict)."""

    sae: str
    model: str
    layer: int
    arch: str
    width: int
    n_tokens: int
    counts: DensityCounts
    n_pcs: int
    massive_dims: list[int]
    dense_latents: list[DenseLatent]
    """The latents above 1%, densest first."""
    antipodal_pairs: list[tuple[int, int, float]]
    """(latent, latent, cosine) among the dense latents, most antipodal first."""
    recon_pc_share: float
    dense_pc_share: float | None
    data_pc_share: float
    fit: ScaffoldFit | None
    verdict: str
    elapsed_s: float
    config: dict = field(default_factory=dict)


def antipodal_pairs(w_dec: Tensor, latents: list[int], threshold: float) -> list[tuple[int, int, float]]:
    """Pairs (i, j), i < j, of `latents` whose decoder rows have cosine below threshold, most antipodal first."""
    if len(latents) < 2:
        return []
    idx = torch.tensor(latents)
    w = w_dec.detach().double().cpu()[idx]
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-300)
    cos = w @ w.t()
    a, b = torch.triu_indices(len(latents), len(latents), offset=1)
    hits = cos[a, b] < threshold
    pairs = [(int(idx[i]), int(idx[j]), float(cos[i, j])) for i, j in zip(a[hits], b[hits])]
    return sorted(((min(i, j), max(i, j), c) for i, j, c in pairs), key=lambda p: p[2])


@torch.no_grad()
def codes_and_recon(sae, x: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Sparse codes [n, m] and reconstruction [n, d] (CPU float32) by the SAE's own inference encoder."""
    param = next(iter(sae.parameters()))
    codes, recon = [], []
    for s in range(0, x.shape[0], chunk):
        out = reconstruct(sae, x[s:s + chunk].to(param.device, param.dtype), "threshold")
        codes.append(out.codes.float().cpu())
        recon.append(out.x_hat.float().cpu())
    return torch.cat(codes), torch.cat(recon)


def density_counts(sae, x: Tensor) -> tuple[DensityCounts, Tensor, Tensor]:
    codes, recon = codes_and_recon(sae, x)
    density = firing_density(codes)
    xd, rd = x.double(), recon.double()
    fvu = float((xd - rd).pow(2).sum() / (xd - xd.mean(0)).pow(2).sum())
    counts = DensityCounts(l0=float((codes != 0).sum(1).double().mean()), fvu=fvu,
                           dense_10=dense_count(density, DENSE), dense_1=dense_count(density, 0.01))
    return counts, codes, recon


def fit_arch(sae, l0: float) -> tuple[str, int]:
    """The trainable arch and k of the fit: the SAE's own when it is a trainable k-sparse arch, otherwise batchtopk
    with k = its measured L0, rounded (at least 1)."""
    arch = getattr(getattr(sae, "cfg", None), "arch", None)
    trainable = archs.names(load_only=False)
    if arch in trainable and archs.get(arch).uses_k:
        return arch, int(sae.cfg.k)
    return "batchtopk", max(1, round(l0))


def diagnose(sae, lm, layer: int, heldout: Tensor, out_dir: str | Path, cfg: DiagnoseConfig | None = None,
             train_contexts: Tensor | None = None, name: str = "sae") -> Diagnosis:
    """Measure the SAE on held-out contexts [N, T]; with `train_contexts` and cfg.train_tokens > 0 also fit a scaffold
    on activations of them (cfg.fit; a fresh pair is saved in out_dir/fit). Writes diagnosis.json, .md and .html
    into out_dir."""
    from scaffold_sae.lm_passes import heldout_activations

    cfg = cfg or DiagnoseConfig()
    fitting = train_contexts is not None and cfg.train_tokens > 0
    _check_request(cfg, sae, fitting)
    lm.check_layer(layer)
    if int(sae.W_dec.shape[1]) != lm.d_model:
        raise DiagnoseError(f"the SAE has input size {int(sae.W_dec.shape[1])} but {lm.spec} has d_model {lm.d_model}: "
                            "diagnose it on the model and layer it was trained on")
    started = time.perf_counter()
    out = Path(out_dir)
    x = heldout_activations(lm, layer, heldout, cfg.tokens, cfg.batch_size, progress=cfg.progress).float()
    counts, codes, recon = density_counts(sae, x)
    density = firing_density(codes)
    w_dec = sae.W_dec.detach().float().cpu()
    pcs = pca(x).vectors[:, :cfg.rank]
    massive, _, _ = outlier_dims(x, cfg.massive_factor)
    dense = sorted((int(i) for i in (density > 0.01).nonzero()[0]), key=lambda i: -density[i])
    align = alignment_scores(w_dec, pcs)
    dense_latents = [DenseLatent(
        latent=i, density=float(density[i]), align_pcs=float(align[i]),
        align_massive=float(w_dec[i, massive].double().pow(2).sum() / w_dec[i].double().pow(2).sum()) if massive else None)
        for i in dense]
    dense_pc_share = None
    if dense:
        dense_out = (codes[:, dense] @ w_dec[dense]).double()
        dense_pc_share = float((dense_out @ pcs).pow(2).sum() / dense_out.pow(2).sum().clamp_min(1e-300))
    fit = None
    if fitting:
        fit = fit_scaffold(sae, lm, layer, train_contexts, x, counts, cfg, out / "fit")
    result = Diagnosis(
        sae=name, model=str(getattr(lm, "spec", "")), layer=int(layer),
        arch=str(getattr(getattr(sae, "cfg", None), "arch", type(sae).__name__)), width=int(w_dec.shape[0]),
        n_tokens=int(x.shape[0]), counts=counts, n_pcs=int(pcs.shape[1]), massive_dims=massive,
        dense_latents=dense_latents, antipodal_pairs=antipodal_pairs(w_dec, dense, cfg.antipodal_cos),
        recon_pc_share=variance_share(recon, pcs), dense_pc_share=dense_pc_share, data_pc_share=variance_share(x, pcs),
        fit=fit, verdict="", elapsed_s=0.0, config=asdict(cfg))
    result.verdict = verdict(result)
    result.elapsed_s = round(time.perf_counter() - started, 3)
    write(result, out)
    return result


def check_settings(cfg: DiagnoseConfig) -> None:
    """One-line DiagnoseError for settings that cannot work (needs no SAE or model)."""
    from scaffold_sae.evals import check_positive

    if cfg.fit not in FITS:
        raise DiagnoseError(f"fit={cfg.fit!r} is invalid: allowed values are {', '.join(FITS)}")
    if cfg.encoder_input not in ("x", "residual"):
        raise DiagnoseError(f"encoder_input={cfg.encoder_input!r} is invalid: allowed values are x, residual")
    check_positive(DiagnoseError, tokens=cfg.tokens, rank=cfg.rank, batch_size=cfg.batch_size,
                   train_batch_size=cfg.train_batch_size)
    if cfg.train_tokens < 0:
        raise DiagnoseError(f"train_tokens={cfg.train_tokens} is invalid: use 0 (no fit) or more")
    if cfg.ctx_len < 2:
        raise DiagnoseError(f"ctx_len={cfg.ctx_len} is invalid: use at least 2 (BOS plus one token)")


def _check_request(cfg: DiagnoseConfig, sae, fitting: bool) -> None:
    """`check_settings`, and a fine-tune of an SAE that already has a scaffold."""
    check_settings(cfg)
    if fitting and cfg.fit == "finetune" and int(getattr(sae, "rank", 0) or 0) > 0:
        raise DiagnoseError(f"fit=finetune needs a plain SAE, this one already has a rank-{sae.rank} scaffold: use "
                            "--fit fresh, or --train-tokens 0")


def fit_scaffold(sae, lm, layer: int, train_contexts: Tensor, x: Tensor, before: DensityCounts,
                 cfg: DiagnoseConfig, out: Path) -> ScaffoldFit:
    """The fit rows: the SAE fine-tuned without and with a scaffold, or a fresh plain / hybrid pair (saved in out),
    measured on the held-out rows x."""
    from scaffold_sae.lm_passes import heldout_activations
    from scaffold_sae.trainer import TrainConfig

    arch, k = fit_arch(sae, before.l0)
    width = int(sae.W_dec.shape[0])
    data = heldout_activations(lm, layer, train_contexts, cfg.train_tokens, cfg.batch_size, progress=cfg.progress)
    batch = min(cfg.train_batch_size, data.shape[0])
    steps_tokens = max(batch, (cfg.train_tokens // batch) * batch)
    train = TrainConfig(tokens=steps_tokens, batch_size=batch, progress=cfg.progress, checkpoint_every=0,
                        init_sample_tokens=min(8192, data.shape[0]), threshold_sample_tokens=min(16384, data.shape[0]),
                        dead_tokens=min(steps_tokens, 65536), device=str(next(iter(sae.parameters())).device))
    if cfg.fit == "finetune":
        from scaffold_sae.finetune import finetune, trainable_copy

        starts = [trainable_copy(sae, arch, k), trainable_copy(sae, arch, k, cfg.rank, cfg.encoder_input)]
        plain, hybrid = finetune(starts, data, train)
    else:
        from scaffold_sae.sae import SAEConfig
        from scaffold_sae.saving import load_sae
        from scaffold_sae.trainer import TensorSource, train_saes

        cfgs = [SAEConfig(arch=arch, d_in=int(sae.W_dec.shape[1]), width=width, k=k, rank=r,
                          encoder_input=cfg.encoder_input) for r in (0, cfg.rank)]
        plain_dir, hybrid_dir = train_saes(TensorSource(data.float()), cfgs, train, out)
        plain, hybrid = load_sae(plain_dir).eval(), load_sae(hybrid_dir).eval()
    given = getattr(getattr(sae, "cfg", None), "arch", type(sae).__name__)
    if arch == given:
        matched = f"{arch} with k = {k} in every row"
    else:
        matched = (f"the {given} SAE has no k: the fit uses {arch} with k = {k}, its measured held-out L0 "
                   f"{before.l0:.2f} rounded")
    if archs.get(arch).calibrates_threshold:
        matched += "; the fitted SAEs' thresholds give L0 = k on a training sample"
    return ScaffoldFit(mode=cfg.fit, arch=arch, width=width, k=k, rank=cfg.rank, train_tokens=steps_tokens,
                       matched_l0=matched, before=before, plain=density_counts(plain, x)[0],
                       scaffold=density_counts(hybrid, x)[0])


FIT_LABELS = {"finetune": ("fine-tuned without a scaffold", "fine-tuned with a rank-{r} scaffold"),
              "fresh": ("fresh plain SAE", "fresh rank-{r} hybrid")}


def verdict(d: Diagnosis) -> str:
    c = d.counts
    line = f"{d.sae}: {c.dense_10} latents fire on >10% of tokens and {c.dense_1} on >1% (L0 {c.l0:.1f})"
    if d.dense_pc_share is not None:
        line += (f"; the dense latents put {d.dense_pc_share:.0%} of their output in the top-{d.n_pcs} PC subspace "
                 f"(the data has {d.data_pc_share:.0%} of its variance there)")
    f = d.fit
    if f and f.mode == "finetune":
        line += (f"; fine-tuned on {f.train_tokens} tokens ({f.arch}, k={f.k}), it keeps {f.plain.dense_10} latents "
                 f"above 10% ({f.plain.dense_1} above 1%) without a scaffold and {f.scaffold.dense_10} "
                 f"({f.scaffold.dense_1}) with a rank-{f.rank} scaffold")
    elif f:
        line += (f"; a rank-{f.rank} scaffold in a fresh {f.arch} SAE of the same width and k={f.k} took dense>10% "
                 f"from {f.plain.dense_10} to {f.scaffold.dense_10} and dense>1% from {f.plain.dense_1} to "
                 f"{f.scaffold.dense_1} (L0 {f.plain.l0:.1f} vs {f.scaffold.l0:.1f})")
    return line + "."


def write(d: Diagnosis, out: Path) -> None:
    from scaffold_sae.fetch import atomic_write_text
    from scaffold_sae.report import Section, Table, jsonable, render_html, render_markdown

    c = d.counts
    sections = [
        Section("Verdict", d.verdict),
        Section("Dense latents", f"{d.n_tokens} held-out tokens of {d.model} layer {d.layer}; top {d.n_pcs} PCs; "
                f"massive dims {d.massive_dims or 'none'}.", tables=[
            Table(["L0", "FVU", "dense >10%", "dense >1%", "recon share in top PCs", "dense output share in top PCs",
                   "data share in top PCs"],
                  [[c.l0, c.fvu, c.dense_10, c.dense_1, d.recon_pc_share, d.dense_pc_share, d.data_pc_share]]),
            Table(["latent", "density", "align top PCs", "align massive dims"],
                  [[x.latent, x.density, x.align_pcs, x.align_massive] for x in d.dense_latents],
                  caption="latents firing on more than 1% of tokens, densest first")]),
        Section("Antipodal pairs", f"dense latents whose decoder rows have cosine below "
                f"{d.config.get('antipodal_cos')}", tables=[
            Table(["latent", "latent", "cosine"], [list(p) for p in d.antipodal_pairs])]),
    ]
    if d.fit:
        f = d.fit
        without, with_ = (label.format(r=f.rank) for label in FIT_LABELS[f.mode])
        what = "the SAE fine-tuned" if f.mode == "finetune" else f"fresh {f.arch} SAEs of width {f.width}"
        sections.append(Section("Would a scaffold remove them?",
                                f"{what} on {f.train_tokens} training tokens, at matched L0: {f.matched_l0}.",
                                tables=[Table(["SAE", "L0", "FVU", "dense >10%", "dense >1%"],
                                              [[name, s.l0, s.fvu, s.dense_10, s.dense_1] for name, s in
                                               (("as given", f.before), (without, f.plain), (with_, f.scaffold))])]))
    title = f"scaffold-sae diagnosis of {d.sae}"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "diagnosis.json", json.dumps(jsonable(asdict(d)), indent=1, allow_nan=False) + "\n")
    markdown = render_markdown(title, sections).replace("Plots are in report.html", "Plots are in diagnosis.html", 1)
    atomic_write_text(out / "diagnosis.md", markdown)
    atomic_write_text(out / "diagnosis.html", render_html(title, sections))


# ----------------------------------------------------------------------------------------------------------
# CLI: scaffold-sae diagnose
# ----------------------------------------------------------------------------------------------------------


@dataclass
class DiagnoseRun(SAESource):
    """Which SAE, model and text `scaffold-sae diagnose` reads, and where the report goes."""

    out: str | None = None
    """Report directory (default: diagnosis/ next to the SAE)."""


def diagnose_from_config(run: DiagnoseRun, cfg: DiagnoseConfig) -> tuple["Diagnosis", Path]:
    """`scaffold-sae diagnose` as one call; returns the diagnosis and its report directory."""

    check_settings(cfg)
    if run.out and Path(run.out).exists() and not Path(run.out).is_dir():
        raise DiagnoseError(f"--out {run.out} is a file: give a directory for the report")
    opened = SAESource.of(run).open(DiagnoseError, lambda sae: _check_request(cfg, sae, cfg.train_tokens > 0))
    heldout = opened.contexts(cfg.tokens, cfg.ctx_len)
    train = opened.contexts(cfg.train_tokens, cfg.ctx_len, split="train") if cfg.train_tokens > 0 else None
    out = Path(run.out) if run.out else opened.beside("diagnosis")
    return diagnose(opened.sae, opened.lm, opened.layer, heldout, out, cfg, train, name=opened.path.name), out
