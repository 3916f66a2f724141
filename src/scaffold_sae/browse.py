"""Feature browser: one pass over held-out text writes a self-contained static site about an SAE's latents.

What the site shows and how each number is computed (one place):
- Statistics use the positions `lm_passes.eval_mask` keeps (not position 0, BOS/special tokens or attention
  sinks), the same tokens as `evals`: density is the share of them on which a latent's code is non-zero (equal to
  `CoreEval.density`), mean activation is the mean code over the tokens where it fires, and the histogram counts
  log10 of those codes on fixed edges.
- Top contexts: per latent, the `top_n` contexts whose largest code at a kept position is largest, kept by a
  streaming top-n (`TopContexts`); each shows a window of tokens around that position with every token's code,
  excluded positions (BOS, sinks) included and marked.
- Quantile samples: per latent, a uniform random sample (without replacement, seed `sample_seed`) of
  `quantile_bins * quantile_n` of the contexts it fires in, kept by the same pass (a streaming top-n of a random key
  per context and latent), then sorted by the context's largest code and cut into `quantile_bins` groups of equal
  size: group g holds sampled contexts between the g-th and (g+1)-th quantiles of that activation. A latent firing
  in fewer contexts than the sample size shows all of them.
- Alignment of decoder row w_i with a subspace with orthonormal basis Q: ||Q^T w_i||^2 / ||w_i||^2
  (`subspace.alignment_scores`) for span(U), the top PCs of the held-out activations and the massive dims.
- Logit effects (`logit_effects`): the direct path only, later blocks ignored. A direction w is scaled to unit RMS
  (sqrt(d) w / ||w||), sent through the model's final norm and unembedding, and the same for the zero vector is
  subtracted: effect = head(norm(sqrt(d) w_hat)) - head(norm(0)). For RMSNorm that is W_U (g * w_hat sqrt(d))
  up to eps; norm biases and head biases cancel; final logit soft-capping is not applied.
- Scaffold direction j: coordinate c_j = V_j^T (x - b_dec); its contexts with the largest and smallest c_j, the
  logit effects of U_j, and the mean |c_j| by position class (BOS = position 0 or the BOS token, sink = any other
  position eval_mask drops, ordinary = the kept positions).

The site opens from disk (file://): data are JSON literals inside .js files loaded by <script> tags, because
browsers refuse fetch() on file URLs; `site.json` holds the same summary for programs.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from scaffold_sae import lm_passes
from scaffold_sae.evals import DENSE
from scaffold_sae.lm_passes import DEFAULT_SINK_FACTOR, eval_mask
from scaffold_sae.subspace import alignment_scores, outlier_dims, pca, span_basis
from scaffold_sae.source import SAESource

HIST_LOG10_MIN, HIST_LOG10_MAX, HIST_BINS = -4.0, 4.0, 256
"""32 bins per decade; the site stores each latent's counts trimmed to the bins between the first and last filled."""
CHUNK = 128
"""Latents per data file of the site."""
ASSETS = Path(__file__).with_name("browse_assets")


class BrowseError(ValueError):
    """A browser site that cannot be built as asked."""


# ----------------------------------------------------------------------------------------------------------
# Streaming pieces (pure tensor code, tested against slow references)
# ----------------------------------------------------------------------------------------------------------


class TopContexts:
    """The n largest scores seen so far in each of `width` columns, with their context id, position and a window
    of values; memory O(n * width * window) whatever the number of contexts."""

    def __init__(self, width: int, n: int, window: int):
        self.n = n
        self.values = torch.full((n, width), -math.inf)
        self.context = torch.full((n, width), -1, dtype=torch.long)
        self.position = torch.full((n, width), -1, dtype=torch.long)
        self.window = torch.zeros(n, width, window)

    def update(self, scores: Tensor, context: Tensor, position: Tensor, window: Tensor) -> None:
        """scores [B, width], context [B], position [B, width], window [B, width, window]."""
        values = torch.cat([self.values, scores.float().cpu()])
        top = values.topk(self.n, dim=0).indices  # [n, width], sorted descending
        contexts = torch.cat([self.context, context.cpu()[:, None].expand(-1, values.shape[1])])
        self.values = values.gather(0, top)
        self.context = contexts.gather(0, top)
        self.position = torch.cat([self.position, position.cpu()]).gather(0, top)
        all_windows = torch.cat([self.window, window.float().cpu()])
        self.window = all_windows.gather(0, top[:, :, None].expand(-1, -1, all_windows.shape[2]))

    def columns(self) -> list[list[tuple[float, int, int, list[float]]]]:
        """Per column, its (score, context, position, window) entries best first; entries never filled left out."""
        values, contexts = self.values.t().tolist(), self.context.t().tolist()
        positions, windows_ = self.position.t().tolist(), self.window.permute(1, 0, 2).tolist()
        return [[entry for entry in zip(v, c, p, w) if entry[1] >= 0]
                for v, c, p, w in zip(values, contexts, positions, windows_)]

    def column(self, j: int) -> list[tuple[float, int, int, list[float]]]:
        return self.columns()[j]


def best_positions(codes: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """Per context and column, the largest code at a kept position and where: codes [B, T, m], keep [B, T] ->
    (scores [B, m], positions [B, m])."""
    masked = codes.masked_fill(~keep[:, :, None], -math.inf)
    scores, positions = masked.max(dim=1)
    return scores, positions


def windows(codes: Tensor, positions: Tensor, before: int, after: int) -> Tensor:
    """codes [B, T, m] around positions [B, m]: [B, m, before + 1 + after], zero outside the context."""
    b, t, m = codes.shape
    padded = torch.cat([codes.new_zeros(b, before, m), codes, codes.new_zeros(b, after, m)], dim=1)
    offsets = torch.arange(before + 1 + after, device=codes.device)
    index = positions[:, None, :] + offsets[None, :, None]  # [B, W, m] in padded coordinates
    return padded.gather(1, index).permute(0, 2, 1)


def log_histogram(values: Tensor, columns: Tensor, width: int) -> Tensor:
    """Counts [width, HIST_BINS] of log10(values) per column on fixed edges (clipped into the end bins)."""
    logs = torch.log10(values.double()).clamp(HIST_LOG10_MIN, HIST_LOG10_MAX - 1e-9)
    bins = ((logs - HIST_LOG10_MIN) / (HIST_LOG10_MAX - HIST_LOG10_MIN) * HIST_BINS).long()
    flat = torch.bincount(columns * HIST_BINS + bins, minlength=width * HIST_BINS)
    return flat.view(width, HIST_BINS)


# ----------------------------------------------------------------------------------------------------------
# Logit effects
# ----------------------------------------------------------------------------------------------------------

NORM_NAMES = ("norm", "final_layernorm", "ln_f", "final_layer_norm", "final_norm")


def final_norm_and_head(lm) -> tuple[nn.Module, nn.Module] | None:
    """The model's final norm and unembedding, or None when they cannot be found."""
    hf = lm.hf_model
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    if head is None:
        return None
    found = [(name, mod) for name, mod in hf.named_modules()
             if name.rsplit(".", 1)[-1] in NORM_NAMES and ".layers." not in f".{name}." and ".h." not in f".{name}."]
    if not found:
        return None
    found.sort(key=lambda item: item[0].count("."))
    return found[0][1], head


@torch.no_grad()
def logit_effects(directions: Tensor, norm: nn.Module, head: nn.Module, chunk: int = 256) -> Tensor:
    """head(norm(sqrt(d) w / ||w||)) - head(norm(0)) for every row w of directions [k, d] -> [k, V] (float32).
    Only for small k; `top_logit_effects` streams over chunks."""
    return torch.cat(list(_effect_chunks(directions, norm, head, chunk)))


@torch.no_grad()
def _effect_chunks(directions: Tensor, norm: nn.Module, head: nn.Module, chunk: int):
    """`logit_effects` of directions [k, d], chunk rows at a time."""
    param = next(head.parameters())
    d = directions.shape[1]
    w = directions.detach().to(param.device, param.dtype)
    unit = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12) * math.sqrt(d)
    base = head(norm(torch.zeros(1, 1, d, device=param.device, dtype=param.dtype)))[0]
    for s in range(0, unit.shape[0], chunk):
        effects = head(norm(unit[s:s + chunk][None]))[0]
        effects -= base
        yield effects.float().cpu()


def top_logit_effects(directions: Tensor, norm: nn.Module, head: nn.Module, n: int, chunk: int = 128
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The n most promoted and most suppressed tokens per direction: (pos values, pos ids, neg values, neg ids),
    each [k, n], computed chunk by chunk so that [k, V] never exists."""
    out: list[list[Tensor]] = [[], [], [], []]
    for effects in _effect_chunks(directions, norm, head, chunk):
        k = min(n, effects.shape[1])
        top, bottom = effects.topk(k, dim=1), effects.topk(k, dim=1, largest=False)
        for slot, t in zip(out, (top.values, top.indices, bottom.values, bottom.indices)):
            slot.append(t)
    return tuple(torch.cat(slot) for slot in out)  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------
# The pass and the site
# ----------------------------------------------------------------------------------------------------------


@dataclass
class BrowseConfig:
    """What the feature browser collects."""

    top_n: int = 20
    """Top-activating contexts kept per latent (and per sign of each scaffold direction)."""
    quantile_bins: int = 5
    """Activation quantile groups of the sampled contexts shown per latent."""
    quantile_n: int = 5
    """Sampled contexts per quantile group."""
    sample_seed: int = 0
    """Seed of the random sample behind the quantile groups."""
    before: int = 10
    """Tokens shown before the top position of a context."""
    after: int = 4
    """Tokens shown after it."""
    n_logits: int = 10
    """Promoted and suppressed tokens listed per latent or scaffold direction."""
    n_pcs: int | None = None
    """Top PCs of the held-out activations to measure alignment with (default: the scaffold rank, or 8)."""
    pca_tokens: int = 16384
    """Held-out tokens kept for the PCA and the massive dims."""
    massive_factor: float = 10.0
    """A dim is massive when its mean |x| exceeds this multiple of the median dim's."""
    batch_size: int = 8
    """Contexts per forward."""
    sink_factor: float = DEFAULT_SINK_FACTOR
    """Attention sinks: norm above this multiple of the context median (as in the harvest)."""
    progress: bool = True
    """Show a progress bar over the pass."""


@dataclass
class LatentRow:
    """One row of the latent table."""

    latent: int
    density: float
    mean_act: float
    max_act: float
    align_scaffold: float | None
    align_pcs: float
    align_massive: float | None
    dense: str
    """'>10%', '>1%' or ''."""
    top_tokens: list[str] = field(default_factory=list)
    """The token at the top position of the best contexts (up to 3)."""


def dense_flag(density: float) -> str:
    return ">10%" if density > DENSE else ">1%" if density > 0.01 else ""


@dataclass
class BrowseStats:
    """Everything the single pass accumulates."""

    n_tokens: int
    fire_counts: Tensor
    act_sums: Tensor
    max_acts: Tensor
    hist: Tensor
    latent_top: TopContexts
    latent_sample: TopContexts
    """Keyed by a random number per (context, latent) where the latent fires: a uniform sample of those contexts."""
    scaffold_top: TopContexts | None
    scaffold_bottom: TopContexts | None
    scaffold_abs: dict[str, Tensor]
    scaffold_count: dict[str, int]
    sample: Tensor
    keep: Tensor
    """eval_mask of every context [N, T] (to mark excluded tokens in the shown windows)."""
    baseline_fire: Tensor | None = None
    """Firing counts of the baseline SAE's latents on the same tokens."""

    @property
    def density(self) -> Tensor:
        return self.fire_counts.double() / max(1, self.n_tokens)


def _sae_device(sae) -> tuple[torch.device, torch.dtype]:
    param = next(iter(sae.parameters()))
    return param.device, param.dtype


@torch.no_grad()
def collect(sae, lm, layer: int, contexts: Tensor, cfg: BrowseConfig, baseline=None) -> BrowseStats:
    """One pass over contexts [N, T]: the statistics, top contexts and PCA sample the site needs (and the firing
    counts of a baseline SAE's latents, when given)."""
    lm.check_layer(layer)
    width, rank = int(sae.W_dec.shape[0]), int(getattr(sae, "rank", 0) or 0)
    for name, one in (("SAE", sae), ("baseline SAE", baseline)):
        if one is not None and int(one.W_dec.shape[1]) != lm.d_model:
            raise BrowseError(f"the {name} has input size {int(one.W_dec.shape[1])} but {lm.spec} has d_model "
                              f"{lm.d_model}: browse it on the model and layer it was trained on")
    device, dtype = _sae_device(sae)
    win = cfg.before + 1 + cfg.after
    fire = torch.zeros(width, dtype=torch.long)
    base_fire = None if baseline is None else torch.zeros(int(baseline.W_dec.shape[0]), dtype=torch.long)
    sums = torch.zeros(width, dtype=torch.float64)
    maxes = torch.zeros(width)
    hist = torch.zeros(width, HIST_BINS, dtype=torch.long)
    latent_top = TopContexts(width, cfg.top_n, win)
    latent_sample = TopContexts(width, cfg.quantile_bins * cfg.quantile_n, win)
    generator = torch.Generator().manual_seed(cfg.sample_seed)
    scaf_top = TopContexts(rank, cfg.top_n, win) if rank else None
    scaf_bottom = TopContexts(rank, cfg.top_n, win) if rank else None
    classes = ("bos", "sink", "ordinary")
    scaf_abs = {c: torch.zeros(rank, dtype=torch.float64) for c in classes}
    scaf_count = dict.fromkeys(classes, 0)
    sample: list[Tensor] = []
    keeps: list[Tensor] = []
    n_sample = n_tokens = 0
    bos_id = lm.bos_token_id
    start = 0
    for batch in lm_passes.batches(contexts, cfg.batch_size, cfg.progress, desc=f"browse layer {layer}"):
        resid = lm.residual(batch, layer)
        keep = eval_mask(lm, resid, batch, cfg.sink_factor).cpu()
        keeps.append(keep)
        b, t, d = resid.shape
        x = resid.reshape(b * t, d).to(device, dtype)
        codes = sae(x).codes.float().cpu().view(b, t, width)
        ids = torch.arange(start, start + b)
        start += b
        kept = codes[keep]
        n_tokens += kept.shape[0]
        fire += (kept != 0).sum(0)
        if baseline is not None:
            base_device, base_dtype = _sae_device(baseline)
            base_fire += (baseline(resid.cpu()[keep].to(base_device, base_dtype)).codes != 0).sum(0).cpu()
        sums += kept.double().sum(0)
        maxes = torch.maximum(maxes, kept.max(0).values.clamp_min(0)) if kept.shape[0] else maxes
        rows, cols = kept.nonzero(as_tuple=True)
        values = kept[rows, cols]
        positive = values > 0
        hist += log_histogram(values[positive], cols[positive], width)
        scores, positions = best_positions(codes, keep)
        around = windows(codes, positions, cfg.before, cfg.after)
        latent_top.update(scores, ids, positions, around)
        keys = torch.rand(scores.shape, generator=generator).masked_fill(~(scores > 0), -math.inf)
        latent_sample.update(keys, ids, positions, around)
        if rank:
            coords = sae.scaffold_codes(x).float().cpu().view(b, t, rank)
            for tops, sign in ((scaf_top, 1.0), (scaf_bottom, -1.0)):
                s, p = best_positions(sign * coords, keep)
                tops.update(s, ids, p, windows(coords, p, cfg.before, cfg.after))
            bos = torch.zeros(b, t, dtype=torch.bool)
            bos[:, 0] = True
            if bos_id is not None:
                bos |= batch.cpu() == bos_id
            masks = {"bos": bos, "sink": ~bos & ~keep, "ordinary": keep}
            for c in classes:
                scaf_abs[c] += coords[masks[c]].abs().double().sum(0)
                scaf_count[c] += int(masks[c].sum())
        if n_sample < cfg.pca_tokens and kept.shape[0]:
            rows_x = resid.cpu()[keep][: cfg.pca_tokens - n_sample].double()
            sample.append(rows_x)
            n_sample += rows_x.shape[0]
    if not n_tokens:
        raise BrowseError("no held-out tokens to browse: give contexts with at least 2 positions")
    return BrowseStats(n_tokens, fire, sums, maxes, hist, latent_top, latent_sample, scaf_top, scaf_bottom, scaf_abs, scaf_count,
                       torch.cat(sample), torch.cat(keeps), base_fire)


def quantile_groups(sample: list[tuple[float, int, int, list[float]]], bins: int
                    ) -> list[list[tuple[float, int, int, list[float]]]]:
    """The sampled (value, context, position, window) entries sorted by value and cut into `bins` groups of equal
    size (sizes differ by at most one; empty groups dropped), lowest first."""
    ordered = sorted(sample, key=lambda entry: (entry[0], entry[1]))
    groups = [ordered[g * len(ordered) // bins:(g + 1) * len(ordered) // bins] for g in range(bins)]
    return [group for group in groups if group]


def trimmed(counts: list[int]) -> dict:
    """Histogram counts without the empty bins at both ends: {start: first filled bin, counts}."""
    filled = [i for i, c in enumerate(counts) if c]
    if not filled:
        return {"start": 0, "counts": []}
    return {"start": filled[0], "counts": counts[filled[0]:filled[-1] + 1]}


def _round(value: float, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


class _Vocab:
    """Token ids seen by the site, decoded once."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.strings: dict[int, str] = {}

    def __call__(self, token_id: int) -> int:
        if token_id not in self.strings:
            self.strings[token_id] = _decode(self.tokenizer, token_id)
        return token_id


def _decode(tokenizer, token_id: int) -> str:
    if tokenizer is None:
        return f"<{token_id}>"
    try:
        text = tokenizer.decode([token_id])
    except Exception:  # tokenizers raise many types on odd ids
        text = ""
    return text or f"<id_{token_id}>"


def _context_entries(entries, token_ids: list[list[int]], kept: list[list[bool]], cfg: BrowseConfig, vocab: _Vocab,
                     positive_only: bool, sign: float = 1.0) -> list[dict]:
    """Top-context entries as site JSON; `sign` undoes the negation of scores ranked by -value (the windows hold
    the raw values)."""
    out = []
    t = len(token_ids[0])
    for score, ctx, pos, window in entries:
        if positive_only and not score > 0:
            continue
        lo = pos - cfg.before
        tokens, acts, excluded = [], [], []
        for offset, value in enumerate(window):
            p = lo + offset
            if 0 <= p < t:
                tokens.append(vocab(token_ids[ctx][p]))
                acts.append(_round(value))
                excluded.append(not kept[ctx][p])
        out.append({"context": ctx, "position": pos, "value": _round(sign * score), "top": cfg.before - max(0, -lo),
                    "tokens": tokens, "acts": acts, "excluded": excluded})
    return out


def build_site(sae, lm, layer: int, contexts: Tensor, out_dir: str | Path, cfg: BrowseConfig | None = None,
               meta: dict[str, Any] | None = None, baseline=None) -> Path:
    """Run the pass over held-out contexts [N, T] (each starting with BOS) and write the site to out_dir; returns
    the path of its index.html. With a `baseline` SAE (a plain SAE of the same model and layer), each scaffold
    direction lists the dense baseline latents it absorbed (`absorbed_latents`)."""
    cfg = cfg or BrowseConfig()
    started = time.perf_counter()
    stats = collect(sae, lm, layer, contexts, cfg, baseline)
    collect_s = time.perf_counter() - started
    width, rank = int(sae.W_dec.shape[0]), int(getattr(sae, "rank", 0) or 0)
    w_dec = sae.W_dec.detach().float().cpu()
    sample = stats.sample
    n_pcs = cfg.n_pcs or (rank if rank else 8)
    spectrum = pca(sample)
    pcs = spectrum.vectors[:, :n_pcs]
    massive, mean_abs, _ = outlier_dims(sample, cfg.massive_factor)
    align_pcs = alignment_scores(w_dec, pcs)
    align_massive = w_dec.double()[:, massive].pow(2).sum(1) / w_dec.double().pow(2).sum(1) if massive else None
    align_u = alignment_scores(w_dec, span_basis(sae.U)) if rank else None
    density = stats.density
    mean_act = stats.act_sums / stats.fire_counts.clamp_min(1)

    vocab = _Vocab(lm.tokenizer)
    token_ids, kept_positions = contexts.tolist(), stats.keep.tolist()

    norm_head = final_norm_and_head(lm)
    if norm_head is not None:
        lp_v, lp_i, ln_v, ln_i = top_logit_effects(w_dec, *norm_head, n=cfg.n_logits)
    out = Path(out_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    rows: list[LatentRow] = []
    latent_entries = stats.latent_top.columns()
    sampled = stats.latent_sample.columns()
    for start in range(0, width, CHUNK):
        chunk = {}
        for i in range(start, min(width, start + CHUNK)):
            entries = _context_entries(latent_entries[i], token_ids, kept_positions, cfg, vocab, positive_only=True)
            logits = None
            if norm_head is not None:
                logits = {"promoted": [[vocab(int(t)), _round(float(v))] for v, t in zip(lp_v[i], lp_i[i])],
                          "suppressed": [[vocab(int(t)), _round(float(v))] for v, t in zip(ln_v[i], ln_i[i])]}
            sample = [(w[cfg.before], c, p, w) for key, c, p, w in sampled[i] if key > -math.inf]
            quantiles = [{"lo": _round(group[0][0]), "hi": _round(group[-1][0]), "contexts": _context_entries(
                group, token_ids, kept_positions, cfg, vocab, positive_only=True)}
                for group in quantile_groups(sample, cfg.quantile_bins)]
            chunk[i] = {"contexts": entries, "quantiles": quantiles, "hist": trimmed(stats.hist[i].tolist()),
                        "logits": logits}
            rows.append(LatentRow(
                latent=i, density=_round(float(density[i]), 6), mean_act=_round(float(mean_act[i])),
                max_act=_round(float(stats.max_acts[i])),
                align_scaffold=None if align_u is None else _round(float(align_u[i])),
                align_pcs=_round(float(align_pcs[i])),
                align_massive=None if align_massive is None else _round(float(align_massive[i])),
                dense=dense_flag(float(density[i])),
                top_tokens=[vocab.strings[e["tokens"][e["top"]]] for e in entries[:3]]))
        _write_js(out / "data" / f"latents-{start // CHUNK:04d}.js", f"BROWSE.chunk({start // CHUNK}, ", chunk, ");")

    directions = []
    absorbed = None
    if rank and baseline is not None:
        absorbed = absorbed_latents(baseline.W_dec.detach().float().cpu(), stats.baseline_fire.double() / stats.n_tokens,
                                    sae.U.detach().float().cpu())
    if rank:
        u = sae.U.detach().float().cpu().t()
        if norm_head is not None:
            up_v, up_i, un_v, un_i = top_logit_effects(u, *norm_head, n=cfg.n_logits)
        for j in range(rank):
            norms = {c: _round(float(stats.scaffold_abs[c][j] / max(1, stats.scaffold_count[c])))
                     for c in stats.scaffold_abs}
            directions.append({
                "direction": j, "mean_abs_by_position": norms, "position_counts": dict(stats.scaffold_count),
                "top": _context_entries(stats.scaffold_top.column(j), token_ids, kept_positions, cfg, vocab, False),
                "bottom": _context_entries(stats.scaffold_bottom.column(j), token_ids, kept_positions, cfg, vocab,
                                           False, sign=-1.0),
                "logits": None if norm_head is None else {
                    "promoted": [[vocab(int(t)), _round(float(v))] for v, t in zip(up_v[j], up_i[j])],
                    "suppressed": [[vocab(int(t)), _round(float(v))] for v, t in zip(un_v[j], un_i[j])]},
                "align_pcs": _round(float(alignment_scores(u[j:j + 1], pcs)[0])),
                "absorbed": absorbed[j] if absorbed is not None else None,
            })
    elapsed = time.perf_counter() - started
    summary = {
        "meta": {**(meta or {}), "model": str(getattr(lm, "spec", "")), "layer": int(layer),
                 "arch": str(getattr(getattr(sae, "cfg", None), "arch", type(sae).__name__)), "width": width,
                 "rank": rank, "n_contexts": int(contexts.shape[0]), "ctx_len": int(contexts.shape[1]),
                 "n_tokens": stats.n_tokens, "n_pcs": n_pcs, "massive_dims": massive,
                 "massive_mean_abs": [_round(float(mean_abs[j])) for j in massive],
                 "dense_10": int((density > DENSE).sum()), "dense_1": int((density > 0.01).sum()),
                 "dead": int((stats.fire_counts == 0).sum()), "chunk": CHUNK,
                 "hist_log10": [HIST_LOG10_MIN, HIST_LOG10_MAX, HIST_BINS],
                 "logit_effects": norm_head is not None, "pass_s": round(collect_s, 3), "elapsed_s": round(elapsed, 3),
                 "config": asdict(cfg)},
        "latents": [asdict(r) for r in rows],
        "scaffold": directions,
        "tokens": {str(k): v for k, v in sorted(vocab.strings.items())},
    }
    _write_js(out / "data" / "index.js", "BROWSE.index(", summary, ");")
    (out / "site.json").write_text(json.dumps(summary, allow_nan=False) + "\n")
    for name in ("index.html", "app.js", "style.css"):
        (out / name).write_text((ASSETS / name).read_text())
    return out / "index.html"


def absorbed_latents(w_base: Tensor, density: Tensor, u: Tensor, min_density: float = 0.01,
                     min_alignment: float = 0.5) -> list[list[dict]]:
    """Per scaffold direction j (column of u [d, r]), the dense baseline latents (density > min_density) whose
    decoder row lies mostly in span(U) (alignment >= min_alignment), each attributed to the direction it has the
    largest cos^2 with; entries {latent, density, align_scaffold, cos}, densest first."""
    align = alignment_scores(w_base, span_basis(u))
    w = w_base.double() / w_base.double().norm(dim=1, keepdim=True).clamp_min(1e-300)
    cols = u.double() / u.double().norm(dim=0, keepdim=True).clamp_min(1e-300)
    cos = w @ cols  # [m, r]
    out: list[list[dict]] = [[] for _ in range(u.shape[1])]
    for i in torch.argsort(density, descending=True).tolist():
        if density[i] > min_density and align[i] >= min_alignment:
            j = int(cos[i].pow(2).argmax())
            out[j].append({"latent": i, "density": _round(float(density[i])), "align_scaffold": _round(float(align[i])),
                           "cos": _round(float(cos[i, j]))})
    return out


def _write_js(path: Path, prefix: str, payload: Any, suffix: str) -> None:
    path.write_text(prefix + json.dumps(payload, allow_nan=False, separators=(",", ":")) + suffix + "\n")


# ----------------------------------------------------------------------------------------------------------
# CLI: scaffold-sae browse
# ----------------------------------------------------------------------------------------------------------


@dataclass
class BrowseRun(SAESource):
    """Which SAE, model and text `scaffold-sae browse` reads, and where the site goes."""

    tokens: int = 65536
    """Held-out tokens to pass over."""
    ctx_len: int = 128
    """Context length (each starts with BOS)."""
    baseline: str | None = None
    """A plain SAE of the same model and layer: scaffold pages list the dense latents of it they absorbed."""
    out: str | None = None
    """Site directory (default: browser/ next to the SAE)."""
    serve: int | None = None
    """After writing, serve the site on http://127.0.0.1:PORT until Ctrl-C (not needed: index.html opens from
    disk)."""


def check_browse_request(run: BrowseRun, cfg: BrowseConfig) -> None:
    """One-line BrowseError for settings that cannot work, before anything loads."""
    from scaffold_sae.evals import check_positive

    check_positive(BrowseError, tokens=run.tokens, top_n=cfg.top_n, batch_size=cfg.batch_size,
                   quantile_bins=cfg.quantile_bins, quantile_n=cfg.quantile_n, pca_tokens=cfg.pca_tokens)
    if run.ctx_len < 2:
        raise BrowseError(f"ctx_len={run.ctx_len} is invalid: use at least 2 (BOS plus one token)")
    for name in ("before", "after", "n_logits"):
        if getattr(cfg, name) < 0:
            raise BrowseError(f"{name}={getattr(cfg, name)} is invalid: --{name.replace('_', '-')} must be 0 or more")
    if run.baseline and not Path(run.baseline).exists():
        raise BrowseError(f"baseline SAE {run.baseline} does not exist: pass a saved plain SAE of the same model "
                          "and layer, or leave --baseline out")
    if run.out and Path(run.out).exists() and not Path(run.out).is_dir():
        raise BrowseError(f"--out {run.out} is a file: give a directory for the site")


def browse_from_config(run: BrowseRun, cfg: BrowseConfig) -> Path:
    """`scaffold-sae browse` as one call: load the SAE and its model, pass over held-out text, write the site;
    returns the path of index.html."""
    from scaffold_sae import saving

    check_browse_request(run, cfg)
    opened = SAESource.of(run).open(BrowseError)
    contexts = opened.contexts(run.tokens, run.ctx_len)
    out = Path(run.out) if run.out else opened.beside("browser")
    baseline = saving.load_sae(run.baseline).to(opened.lm.device).eval() if run.baseline else None
    return build_site(opened.sae, opened.lm, opened.layer, contexts, out, cfg, baseline=baseline,
                      meta={"sae": str(opened.path), "corpus": run.corpus, "baseline": run.baseline})


def serve_site(site_dir: str | Path, port: int) -> None:
    """Serve a written site until Ctrl-C / SIGTERM (the normal way to stop it)."""
    server = site_server(site_dir, port)
    print(f"serving http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # faults.Interrupted included: stopping the server is the normal end
        pass
    finally:
        server.server_close()


def site_server(site_dir: str | Path, port: int = 0):
    """An HTTP server for a written site on 127.0.0.1 (port 0: any free port); call serve_forever()."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Quiet, directory=str(site_dir)))
