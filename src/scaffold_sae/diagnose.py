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
- The fit: a fresh pair of SAEs of the same width and sparsity (the SAE's arch and k when it is a trainable k-sparse
  arch, else batchtopk with k = its measured L0), one plain and one with a rank-`rank` scaffold, trained in lockstep
  on the same harvested tokens; their dense counts at the same inference rule (threshold, calibrated to L0 = k)
  answer "would a scaffold remove them". The SAE itself is not fine-tuned.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from scaffold_sae import archs
from scaffold_sae.evals import dense_count, firing_density, reconstruct
from scaffold_sae.subspace import alignment_scores, outlier_dims, pca, variance_share


@dataclass
class DiagnoseConfig:
    """What `diagnose` measures and fits."""

    tokens: int = 16384
    """Held-out tokens for the statistics."""
    rank: int = 8
    """Rank of the PC subspace and of the scaffold fitted for comparison."""
    train_tokens: int = 262144
    """Tokens for training the fresh plain / scaffolded pair (0 skips the fit)."""
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


@dataclass
class ScaffoldFit:
    """A fresh plain SAE and a fresh scaffolded one of the same width and sparsity, trained alike."""

    arch: str
    width: int
    k: int
    rank: int
    train_tokens: int
    plain: DensityCounts
    scaffold: DensityCounts


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
                           dense_10=dense_count(density, 0.1), dense_1=dense_count(density, 0.01))
    return counts, codes, recon


def fit_arch(sae, l0: float) -> tuple[str, int]:
    """The trainable arch and k of the fresh pair: the SAE's own when it is a trainable k-sparse arch."""
    arch = getattr(getattr(sae, "cfg", None), "arch", None)
    trainable = archs.names(load_only=False)
    if arch in trainable and archs.get(arch).uses_k:
        return arch, int(sae.cfg.k)
    return "batchtopk", max(1, round(l0))


def diagnose(sae, lm, layer: int, heldout: Tensor, out_dir: str | Path, cfg: DiagnoseConfig | None = None,
             train_contexts: Tensor | None = None, name: str = "sae") -> Diagnosis:
    """Measure the SAE on held-out contexts [N, T]; with `train_contexts` and cfg.train_tokens > 0 also train the
    fresh plain / scaffolded pair on them (in out_dir/fit). Writes diagnosis.json, .md and .html into out_dir."""
    from scaffold_sae.lm_passes import heldout_activations

    cfg = cfg or DiagnoseConfig()
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
    if train_contexts is not None and cfg.train_tokens > 0:
        fit = _fit(sae, lm, layer, train_contexts, x, counts.l0, cfg, out / "fit")
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


def _fit(sae, lm, layer: int, train_contexts: Tensor, x: Tensor, l0: float, cfg: DiagnoseConfig,
         out: Path) -> ScaffoldFit:
    from scaffold_sae.lm_passes import heldout_activations
    from scaffold_sae.sae import SAEConfig
    from scaffold_sae.saving import load_sae
    from scaffold_sae.trainer import TensorSource, TrainConfig, train_saes

    arch, k = fit_arch(sae, l0)
    width, d = int(sae.W_dec.shape[0]), int(sae.W_dec.shape[1])
    data = heldout_activations(lm, layer, train_contexts, cfg.train_tokens, cfg.batch_size, progress=cfg.progress)
    batch = min(cfg.train_batch_size, data.shape[0])
    steps_tokens = max(batch, (cfg.train_tokens // batch) * batch)
    train = TrainConfig(tokens=steps_tokens, batch_size=batch, progress=cfg.progress, checkpoint_every=0,
                        init_sample_tokens=min(8192, data.shape[0]), threshold_sample_tokens=min(16384, data.shape[0]),
                        dead_tokens=min(steps_tokens, 65536))
    cfgs = [SAEConfig(arch=arch, d_in=d, width=width, k=k, rank=r) for r in (0, cfg.rank)]
    plain_dir, hybrid_dir = train_saes(TensorSource(data.float()), cfgs, train, out)
    plain, _, _ = density_counts(load_sae(plain_dir).eval(), x)
    hybrid, _, _ = density_counts(load_sae(hybrid_dir).eval(), x)
    return ScaffoldFit(arch=arch, width=width, k=k, rank=cfg.rank, train_tokens=steps_tokens, plain=plain,
                       scaffold=hybrid)


def verdict(d: Diagnosis) -> str:
    c = d.counts
    line = f"{d.sae}: {c.dense_10} latents fire on >10% of tokens and {c.dense_1} on >1% (L0 {c.l0:.1f})"
    if d.dense_pc_share is not None:
        line += (f"; the dense latents put {d.dense_pc_share:.0%} of their output in the top-{d.n_pcs} PC subspace "
                 f"(the data has {d.data_pc_share:.0%} of its variance there)")
    if d.fit:
        f = d.fit
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
        sections.append(Section("Would a scaffold remove them?",
                                f"fresh {f.arch} SAEs, width {f.width}, k {f.k}, {f.train_tokens} training tokens",
                                tables=[Table(["SAE", "L0", "FVU", "dense >10%", "dense >1%"],
                                              [[name, s.l0, s.fvu, s.dense_10, s.dense_1] for name, s in
                                               (("plain (rank 0)", f.plain), (f"scaffold (rank {f.rank})", f.scaffold))])]))
    title = f"scaffold-sae diagnosis of {d.sae}"
    atomic_write_text(out / "diagnosis.json", json.dumps(jsonable(asdict(d)), indent=1, allow_nan=False) + "\n")
    atomic_write_text(out / "diagnosis.md", render_markdown(title, sections))
    atomic_write_text(out / "diagnosis.html", render_html(title, sections))


# ----------------------------------------------------------------------------------------------------------
# CLI: scaffold-sae diagnose
# ----------------------------------------------------------------------------------------------------------


@dataclass
class DiagnoseRun:
    """Which SAE, model and text `scaffold-sae diagnose` reads, and where the report goes."""

    sae: str
    """Saved SAE directory (ours, SAELens or sparsify format)."""
    model: str | None = None
    """Model spec (default: from the SAE's metadata)."""
    layer: int | None = None
    """Residual layer (default: from the SAE's metadata)."""
    corpus: str = "news"
    """Corpus spec (held-out split for the statistics, train split for the fit)."""
    device: str = "cpu"
    """torch device: cpu | cuda | cuda:N | auto."""
    out: str | None = None
    """Report directory (default: diagnosis/ next to the SAE)."""


def diagnose_from_config(run: DiagnoseRun, cfg: DiagnoseConfig) -> tuple["Diagnosis", Path]:
    """`scaffold-sae diagnose` as one call; returns the diagnosis and its report directory."""
    from scaffold_sae import corpus as corpus_mod
    from scaffold_sae.evals import open_sae_with_model

    opened = open_sae_with_model(run.sae, run.model, run.layer, run.device)
    sae_path, sae, lm, layer = opened.path, opened.sae, opened.lm, opened.layer
    corpus = corpus_mod.load_corpus(run.corpus)
    heldout = corpus_mod.pack_contexts(lm.tokenizer, corpus, ctx_len=cfg.ctx_len, n_tokens=cfg.tokens,
                                       split="heldout", bos_id=lm.bos_token_id)
    train = None
    if cfg.train_tokens > 0:
        train = corpus_mod.pack_contexts(lm.tokenizer, corpus, ctx_len=cfg.ctx_len, n_tokens=cfg.train_tokens,
                                         split="train", bos_id=lm.bos_token_id)
    out = Path(run.out) if run.out else (sae_path if sae_path.is_dir() else sae_path.parent) / "diagnosis"
    return diagnose(sae, lm, int(layer), heldout, out, cfg, train, name=sae_path.name), out
