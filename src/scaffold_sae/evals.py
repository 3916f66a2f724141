"""Core evaluation of an SAE on held-out contexts: reconstruction, sparsity, density and spliced CE / KL.

Conventions (one place, used by every number here):
- Position 0 of every context (BOS / attention sink) is excluded from reconstruction, sparsity and density
  statistics. When a reconstruction or an ablation is spliced into the model, position 0 keeps its original
  activation, and the next-token prediction made at position 0 (identical in every condition) is left out of
  CE and KL.
- For a hybrid SAE the rank-r scaffold is part of the dense path: L0, dead and dense counts come from the
  sparse codes only; FVU, MSE, cosine and the spliced CE use the full reconstruction (scaffold + sparse).
  `fvu_sparse` is the FVU of the sparse path alone (x_hat minus the scaffold term).
- CE loss score = (CE_abl - CE_sae) / (CE_abl - CE_clean), KL score = (KL_abl - KL_sae) / KL_abl, against
  zero-ablation and, separately, mean-ablation (residual replaced by its mean over held-out tokens that are not
  CE tokens).
- A latent is dense at 10% if it fires on MORE than 10% of the eval tokens (likewise 1%); dead if it never
  fires on them.
"""

from __future__ import annotations

import inspect
import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from scaffold_sae import archs, lm_passes
from scaffold_sae.lm_passes import DEFAULT_SINK_FACTOR, eval_mask
from scaffold_sae.source import SAESource

INFERENCE_MODES = ("threshold", "batchtopk")
HIST_LOG10_MIN = -7.0
HIST_BINS = 56


class EvalError(ValueError):
    """An evaluation that cannot run as asked."""


# ----------------------------------------------------------------------------------------------------------
# Pure metric functions (whole tensors; the streaming accumulators below must agree with them)
# ----------------------------------------------------------------------------------------------------------


def l0(codes: torch.Tensor) -> float:
    """Mean number of non-zero latents per token, codes [N, m]."""
    return float((codes.detach() != 0).sum(-1).double().mean())


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Fraction of variance unexplained: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over tokens, x [N, d]."""
    x, x_hat = _f64(x), _f64(x_hat)
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """1 - FVU."""
    return 1.0 - fvu(x, x_hat)


def mse(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean squared error per element (mean over tokens and dimensions)."""
    return float(((_f64(x) - _f64(x_hat)) ** 2).mean())


def mean_cosine(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean over tokens of cos(x, x_hat); a zero vector has cosine 0 with anything."""
    return float(_cosines(_f64(x), _f64(x_hat)).mean())


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double().cpu()


def _cosines(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(x, x_hat, dim=-1, eps=1e-12)


def firing_density(codes: torch.Tensor) -> np.ndarray:
    """Per-latent share of tokens on which the latent is non-zero, codes [N, m] -> float64 [m]."""
    return (codes.detach() != 0).sum(0).double().div(codes.shape[0]).cpu().numpy()


DENSE = 0.1
"""A latent firing on more than this share of tokens is dense (the paper's >10%; dense_10 counts them)."""


def dead_count(density: np.ndarray) -> int:
    """Latents that never fired."""
    return int((np.asarray(density) == 0).sum())


def dense_count(density: np.ndarray, threshold: float) -> int:
    """Latents firing on more than `threshold` (a share, e.g. 0.1) of tokens."""
    return int((np.asarray(density) > threshold).sum())


def density_histogram(density: np.ndarray, bins: int = HIST_BINS, log10_min: float = HIST_LOG10_MIN
                      ) -> tuple[list[int], list[float]]:
    """Histogram of log10(density) over the latents that fired, on fixed edges [log10_min, 0].

    Fixed edges let histograms of different SAEs be overlaid; densities below 10**log10_min land in the first
    bin. Dead latents (density 0) are not in the histogram (see `dead_count`).
    """
    density = np.asarray(density, dtype=np.float64)
    alive = density[density > 0]
    edges = np.linspace(log10_min, 0.0, bins + 1)
    counts, _ = np.histogram(np.clip(np.log10(alive), log10_min, 0.0), bins=edges)
    return [int(c) for c in counts], [round(float(e), 6) for e in edges]


def kl_per_position(clean_logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_clean || p_other) in nats at every position, [..., V] -> [...]."""
    log_p = F.log_softmax(clean_logits.float(), dim=-1)
    log_q = F.log_softmax(other_logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def ce_per_position(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token CE in nats for the predictions made at positions 1..T-2 (targets 2..T-1), [B, T-2]."""
    logits = logits[:, 1:-1].float()
    targets = input_ids.to(logits.device)[:, 2:]
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")


def ce_score(ce_clean: float, ce_sae: float, ce_ablated: float) -> float:
    """(CE_abl - CE_sae) / (CE_abl - CE_clean): 1 = as good as clean, 0 = as bad as the ablation."""
    denominator = ce_ablated - ce_clean
    return float((ce_ablated - ce_sae) / denominator) if denominator != 0 else float("nan")


def kl_score(kl_sae: float, kl_ablated: float) -> float:
    """(KL_abl - KL_sae) / KL_abl."""
    return float((kl_ablated - kl_sae) / kl_ablated) if kl_ablated != 0 else float("nan")


def batch_topk_codes(pre_acts: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k * N largest positive pre-activations over the whole batch [N, m]; zeros elsewhere."""
    flat = pre_acts.relu().flatten()
    keep = min(int(k) * pre_acts.shape[0], flat.numel())
    values, indices = flat.topk(keep, sorted=False)
    codes = torch.zeros_like(flat)
    codes[indices] = values
    return codes.view_as(pre_acts)


# ----------------------------------------------------------------------------------------------------------
# Streaming accumulators (float64, bounded memory: O(d + m) whatever the number of tokens)
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ReconstructionAccumulator:
    """Running sums for FVU / MSE / cosine / L0 / firing counts over batches of tokens.

    Total variance uses Chan's parallel update of per-dimension means and squared deviations, which stays
    exact in float64 even with the large offsets of massive-activation dimensions.
    """

    d: int
    width: int
    n: int = 0
    mean: torch.Tensor = field(init=False)
    m2: torch.Tensor = field(init=False)
    sse: float = 0.0
    sse_sparse: float = 0.0
    cosine_sum: float = 0.0
    active_sum: int = 0
    fire_counts: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.mean = torch.zeros(self.d, dtype=torch.float64)
        self.m2 = torch.zeros(self.d, dtype=torch.float64)
        self.fire_counts = torch.zeros(self.width, dtype=torch.int64)

    def update(self, x: torch.Tensor, x_hat: torch.Tensor, codes: torch.Tensor,
               x_hat_sparse: torch.Tensor | None = None) -> None:
        x64, x_hat64 = x.detach().double().cpu(), x_hat.detach().double().cpu()
        n_b = x64.shape[0]
        if n_b == 0:
            return
        mean_b = x64.mean(0)
        m2_b = ((x64 - mean_b) ** 2).sum(0)
        total = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / total)
        self.m2 = self.m2 + m2_b + delta ** 2 * (self.n * n_b / total)
        self.n = total
        self.sse += float(((x64 - x_hat64) ** 2).sum())
        sparse = x_hat64 if x_hat_sparse is None else x_hat_sparse.detach().double().cpu()
        self.sse_sparse += float(((x64 - sparse) ** 2).sum())
        self.cosine_sum += float(_cosines(x64, x_hat64).sum())
        active = (codes.detach() != 0).cpu()
        self.active_sum += int(active.sum())
        self.fire_counts += active.sum(0)

    @property
    def total_variance(self) -> float:
        return float(self.m2.sum())

    def density(self) -> np.ndarray:
        return (self.fire_counts.double() / max(self.n, 1)).numpy()


@dataclass
class SpliceAccumulator:
    """Running sums of CE per condition and KL(clean || condition) over predicted positions."""

    n: int = 0
    ce: dict[str, float] = field(default_factory=dict)
    kl: dict[str, float] = field(default_factory=dict)

    def add_ce(self, condition: str, ce: torch.Tensor) -> None:
        self.ce[condition] = self.ce.get(condition, 0.0) + float(ce.double().sum())

    def add_kl(self, condition: str, kl: torch.Tensor) -> None:
        self.kl[condition] = self.kl.get(condition, 0.0) + float(kl.double().sum())

    def mean_ce(self, condition: str) -> float:
        return self.ce[condition] / max(self.n, 1)

    def mean_kl(self, condition: str) -> float:
        return self.kl[condition] / max(self.n, 1)


# ----------------------------------------------------------------------------------------------------------
# The SAE side: codes, reconstruction and scaffold for any SAE with the HybridSAE interface
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Reconstruction:
    codes: torch.Tensor
    x_hat: torch.Tensor
    scaffold: torch.Tensor | None


def sae_width(sae) -> int:
    cfg = getattr(sae, "cfg", None)
    width = getattr(cfg, "width", None) or getattr(sae, "width", None)
    if width is None:
        width = int(sae.W_dec.shape[0])
    return int(width)


def sae_rank(sae) -> int:
    return int(getattr(getattr(sae, "cfg", None), "rank", None) or getattr(sae, "rank", 0) or 0)


def sae_k(sae) -> int | None:
    k = getattr(getattr(sae, "cfg", None), "k", None) or getattr(sae, "k", None)
    return int(k) if k else None


@torch.no_grad()
def reconstruct(sae, x: torch.Tensor, inference: str = "threshold") -> Reconstruction:
    """Codes, full reconstruction and scaffold term for tokens x [N, d] (raw activations).

    inference="threshold": the SAE's own inference encoder (JumpReLU threshold for BatchTopK / Matryoshka).
    inference="batchtopk": batch top-k over these N tokens with the SAE's k (L0 = k when enough
    pre-activations are positive); only for batchtopk / matryoshka SAEs.
    """
    if inference not in INFERENCE_MODES:
        raise EvalError(f"unknown inference mode {inference!r}: use one of {', '.join(INFERENCE_MODES)}")
    rank = sae_rank(sae)
    if inference == "threshold":
        out = sae(x)
    else:
        check_batchtopk_able(sae)
        if "batch_topk" in inspect.signature(sae.forward).parameters:
            out = sae(x, batch_topk=True)
        else:
            codes = _batch_topk_encode(sae, x)
            return Reconstruction(codes, sae.decode(codes, x), sae.scaffold(x) if rank > 0 else None)
    scaffold = getattr(out, "scaffold_out", None) if rank > 0 else None
    return Reconstruction(codes=out.codes, x_hat=out.x_hat, scaffold=scaffold)


def check_batchtopk_able(sae) -> None:
    """EvalError unless the SAE's arch has batch top-k inference."""
    arch = getattr(getattr(sae, "cfg", None), "arch", None)
    spec = archs.find(arch)
    if spec is None or "batchtopk" not in spec.inference_modes:
        able = [name for name in archs.names(load_only=True) if "batchtopk" in archs.get(name).inference_modes]
        raise EvalError(f"batch top-k inference needs a {' or '.join(able)} SAE with its k, "
                        f"this one is {arch!r}: evaluate it with --inference threshold")


def _batch_topk_encode(sae, x: torch.Tensor) -> torch.Tensor:
    k = sae_k(sae)
    for name in ("pre_activations", "pre_acts"):
        if hasattr(sae, name) and k:
            return batch_topk_codes(getattr(sae, name)(x), k)
    raise EvalError(f"{type(sae).__name__} has no batch top-k inference (no forward(x, batch_topk=True) or "
                    f"pre_activations(x) with cfg.k): evaluate it with --inference threshold")


# ----------------------------------------------------------------------------------------------------------
# The full evaluation
# ----------------------------------------------------------------------------------------------------------


@dataclass
class CoreEval:
    """Every core number for one SAE on one set of held-out contexts (serialise with dataclasses.asdict)."""

    model: str
    """Model spec the SAE was spliced into."""
    layer: int
    """Residual stream after this block."""
    arch: str
    """SAE architecture (from sae.cfg.arch when present)."""
    rank: int
    """Scaffold rank r (0 for a plain SAE)."""
    width: int
    """Number of sparse latents."""
    inference: str
    """'threshold' (the SAE's own JumpReLU / activation) or 'batchtopk' (batch top-k with the SAE's k)."""
    n_contexts: int
    ctx_len: int
    n_tokens: int
    """Tokens in the reconstruction / density statistics (position 0 of each context excluded)."""
    n_predictions: int
    """Next-token predictions in CE / KL (predictions made at positions 1..T-2)."""
    l0: float
    """Mean active sparse latents per token (scaffold coordinates never count)."""
    fvu: float
    """sum ||x - x_hat||^2 / sum ||x - mean x||^2 with the full reconstruction (scaffold + sparse)."""
    explained_variance: float
    fvu_sparse: float
    """FVU of the sparse path alone (x_hat without the scaffold term); equals fvu when rank is 0."""
    mse: float
    """Mean squared error per element."""
    cosine: float
    """Mean cosine similarity of x and x_hat per token."""
    dead: int
    dead_share: float
    dense_10: int
    """Latents firing on more than 10% of eval tokens."""
    dense_10_share: float
    dense_1: int
    """Latents firing on more than 1% of eval tokens."""
    dense_1_share: float
    max_density: float
    ce_clean: float
    ce_sae: float
    ce_zero: float
    ce_mean: float
    ce_score_zero: float
    """(CE_zero - CE_sae) / (CE_zero - CE_clean)."""
    ce_score_mean: float
    """(CE_mean - CE_sae) / (CE_mean - CE_clean), mean-ablation over the eval tokens."""
    kl_sae: float
    kl_zero: float
    kl_mean: float
    kl_score_zero: float
    kl_score_mean: float
    bos_policy: str = ("position 0, BOS/special and attention-sink tokens excluded from statistics and kept at "
                       "their original activation in every splice; "
                       "the prediction made at position 0 is excluded from CE/KL")
    density_hist_counts: list[int] = field(default_factory=list)
    """Histogram of log10 per-latent density on density_hist_edges (latents that fired)."""
    density_hist_edges: list[float] = field(default_factory=list)
    density: list[float] = field(default_factory=list)
    """Per-latent firing density on the eval tokens."""

    def scalars(self) -> dict[str, Any]:
        """Every field but the per-latent and histogram arrays."""
        return {k: v for k, v in asdict(self).items() if not isinstance(v, list)}


def mean_activation(lm, layer: int, contexts: torch.Tensor, batch_size: int = 8, progress: bool = True,
                    sink_factor: float = DEFAULT_SINK_FACTOR) -> torch.Tensor:
    """Mean residual after `layer` over the contexts' evaluated positions (see eval_mask); float64 [d]."""
    total, count = torch.zeros(lm.d_model, dtype=torch.float64), 0
    passes = lm_passes.residual_rows(lm, layer, contexts, batch_size, sink_factor, progress, "eval: mean activation")
    for rows in passes:
        rows = rows.double().cpu()
        total += rows.sum(0)
        count += rows.shape[0]
    if not count:
        raise EvalError("no eval tokens: contexts need at least 2 positions (position 0 is excluded)")
    return total / count


def evaluate(sae, lm, layer: int, contexts: torch.Tensor, batch_size: int = 4, inference: str = "threshold",
             mean_resid: torch.Tensor | None = None, progress: bool = True) -> CoreEval:
    """Core evaluation of one SAE at residual `layer` of `lm` on held-out contexts [N, T] (each starting
    with BOS). See `evaluate_many` (the same, for several SAEs sharing the model passes)."""
    return evaluate_many({"sae": sae}, lm, layer, contexts, batch_size, inference, mean_resid, progress)["sae"]


def evaluate_many(saes: Mapping[str, Any], lm, layer: int, contexts: torch.Tensor, batch_size: int = 4,
                  inference: str | Mapping[str, str] = "threshold", mean_resid: torch.Tensor | None = None,
                  progress: bool = True, ce_contexts: int | None = None,
                  sink_factor: float = DEFAULT_SINK_FACTOR) -> dict[str, CoreEval]:
    """Core evaluation of several SAEs on the same contexts, streaming over batches of contexts.

    Per batch the model runs 3 + len(saes) forwards: clean, zero-ablated and mean-ablated (shared by every
    SAE), then one with each reconstruction spliced in. Unless `mean_resid` is given, the mean activation takes one
    partial pass first over the contexts after the first `ce_contexts` (over all of them, in-sample, when every context
    is a CE context: pass a mean fitted elsewhere to avoid that). `inference` is one mode for all or {name: mode}.
    Memory: O(batch_size * T * V) for the logits plus O(d + width) per SAE, whatever the number of contexts.
    With `ce_contexts`, only the first that many contexts get the (costly) spliced CE / KL; reconstruction and
    density statistics use all of them. Position 0, BOS/special tokens and attention sinks are excluded from
    statistics and keep their original activation in every splice (eval_mask).
    """
    lm.check_layer(layer)
    if not saes:
        raise EvalError("no SAEs to evaluate")
    modes = {name: inference if isinstance(inference, str) else inference.get(name, "threshold") for name in saes}
    for mode in modes.values():
        if mode not in INFERENCE_MODES:
            raise EvalError(f"unknown inference mode {mode!r}: use one of {', '.join(INFERENCE_MODES)}")
    if contexts.ndim != 2 or contexts.shape[1] < 3:
        raise EvalError(f"contexts must be [N, T] token ids with T >= 3, got shape {tuple(contexts.shape)}")
    d = lm.d_model
    for name, sae in saes.items():
        d_sae = getattr(getattr(sae, "cfg", None), "d_in", None) or d
        if int(d_sae) != d:
            raise EvalError(f"SAE {name!r} has input size {d_sae} but {lm.spec} has d_model {d} at layer "
                            f"{layer}: evaluate the SAE on the model and layer it was trained on")
    n_ce = contexts.shape[0] if ce_contexts is None else min(int(ce_contexts), contexts.shape[0])
    if mean_resid is None:  # fitted off the CE contexts where there are others
        fit = contexts[n_ce:] if n_ce < contexts.shape[0] else contexts
        mean_resid = mean_activation(lm, layer, fit, batch_size, progress, sink_factor)
    seen = 0
    recon = {name: ReconstructionAccumulator(d=d, width=sae_width(sae)) for name, sae in saes.items()}
    splice = SpliceAccumulator()
    desc = f"eval {len(saes)} SAE{'s' if len(saes) > 1 else ''} at layer {layer}"

    with torch.no_grad():
        ce_part = lm_passes.batches(contexts[:n_ce], batch_size, progress, desc=f"{desc} (CE)")
        rest = lm_passes.batches(contexts[n_ce:], batch_size, progress, desc=desc) if n_ce < contexts.shape[0] else ()
        for batch in itertools.chain(ce_part, rest):
            do_ce = seen < n_ce
            if do_ce:
                clean_logits, resid = lm_passes.clean_pass(lm, batch, layer)
            else:
                resid = lm.residual(batch, layer)
            seen += batch.shape[0]
            keep = eval_mask(lm, resid, batch, sink_factor)
            b = resid.shape[0]
            if do_ce:
                targets = batch.to(clean_logits.device)[:, 2:]
                clean_logp = F.log_softmax(clean_logits[:, 1:-1].float(), dim=-1)
                del clean_logits
                splice.n += targets.numel()
                splice.add_ce("clean", -clean_logp.gather(-1, targets.unsqueeze(-1)))

            def spliced(condition: str, replacement: torch.Tensor) -> None:
                logits = lm_passes.run_from(lm, batch, layer, lm_passes.splice(resid, keep, replacement))
                for row in range(b):  # row by row: temporaries stay [T, V] even for 256k vocabularies
                    log_q = F.log_softmax(logits[row, 1:-1].float(), dim=-1)
                    splice.add_ce(condition, -log_q.gather(-1, targets[row].unsqueeze(-1)))
                    splice.add_kl(condition, (clean_logp[row].exp() * (clean_logp[row] - log_q)).sum(-1))

            if do_ce:
                spliced("zero", torch.zeros_like(resid[keep]))
                spliced("mean", mean_resid.to(resid.device, resid.dtype).expand(int(keep.sum()), d))
            x = resid[keep]
            for name, sae in saes.items():
                param = next(iter(sae.parameters()), None)
                x_in = x if param is None else x.to(param.device, param.dtype)
                out = reconstruct(sae, x_in, modes[name])
                x_hat = out.x_hat.to(resid.device, resid.dtype)
                sparse_only = None if out.scaffold is None else out.x_hat - out.scaffold
                recon[name].update(x, x_hat, out.codes, sparse_only)
                if do_ce:
                    spliced(f"sae:{name}", x_hat)
            if do_ce:
                del clean_logp

    return {name: _core_eval(sae, lm, layer, contexts, modes[name], recon[name], splice, f"sae:{name}")
            for name, sae in saes.items()}


def _core_eval(sae, lm, layer: int, contexts: torch.Tensor, inference: str, recon: ReconstructionAccumulator,
               splice: SpliceAccumulator, condition: str) -> CoreEval:
    density = recon.density()
    width = recon.width
    counts, edges = density_histogram(density)
    total_var = recon.total_variance
    ce = {c: splice.mean_ce(c) for c in ("clean", "zero", "mean")}
    kl = {c: splice.mean_kl(c) for c in ("zero", "mean")}
    ce_sae, kl_sae = splice.mean_ce(condition), splice.mean_kl(condition)
    fvu_full = recon.sse / total_var
    return CoreEval(
        model=str(getattr(lm, "spec", "")), layer=int(layer),
        arch=str(getattr(getattr(sae, "cfg", None), "arch", type(sae).__name__)), rank=sae_rank(sae),
        width=width, inference=inference, n_contexts=int(contexts.shape[0]), ctx_len=int(contexts.shape[1]),
        n_tokens=recon.n, n_predictions=splice.n,
        l0=recon.active_sum / recon.n, fvu=fvu_full, explained_variance=1.0 - fvu_full,
        fvu_sparse=recon.sse_sparse / total_var, mse=recon.sse / (recon.n * recon.d),
        cosine=recon.cosine_sum / recon.n,
        dead=dead_count(density), dead_share=dead_count(density) / width,
        dense_10=dense_count(density, DENSE), dense_10_share=dense_count(density, DENSE) / width,
        dense_1=dense_count(density, 0.01), dense_1_share=dense_count(density, 0.01) / width,
        max_density=float(density.max()) if width else 0.0,
        ce_clean=ce["clean"], ce_sae=ce_sae, ce_zero=ce["zero"], ce_mean=ce["mean"],
        ce_score_zero=ce_score(ce["clean"], ce_sae, ce["zero"]),
        ce_score_mean=ce_score(ce["clean"], ce_sae, ce["mean"]),
        kl_sae=kl_sae, kl_zero=kl["zero"], kl_mean=kl["mean"],
        kl_score_zero=kl_score(kl_sae, kl["zero"]), kl_score_mean=kl_score(kl_sae, kl["mean"]),
        density_hist_counts=counts, density_hist_edges=edges, density=[float(v) for v in density],
    )


# ----------------------------------------------------------------------------------------------------------
# CLI: scaffold-sae eval
# ----------------------------------------------------------------------------------------------------------


@dataclass
class CoreEvalConfig(SAESource):
    """`scaffold-sae eval`: L0, FVU, cosine, dead/dense latents, density histogram and spliced CE/KL scores of a
    saved SAE on held-out contexts."""

    tokens: int = 4096
    """Held-out tokens to evaluate on (each costs ~4.5 forwards)."""
    ctx_len: int = 128
    """Context length (each starts with BOS)."""
    batch_size: int = 4
    """Contexts per forward."""
    inference: str = "threshold"
    """threshold: the SAE's own encoder; batchtopk: batch top-k with its k (matched L0)."""
    out: str | None = None
    """JSON path (default: eval-<inference>.json next to the SAE)."""


def check_eval_request(cfg: CoreEvalConfig) -> None:
    """One-line EvalError for settings that cannot work, before anything loads."""
    if cfg.inference not in INFERENCE_MODES:
        raise EvalError(f"inference={cfg.inference!r} is invalid: allowed values are {', '.join(INFERENCE_MODES)}")
    check_positive(EvalError, tokens=cfg.tokens, batch_size=cfg.batch_size)
    if cfg.ctx_len < 3:
        raise EvalError(f"ctx_len={cfg.ctx_len} is invalid: use at least 3 (BOS plus two tokens to predict)")
    if cfg.out and Path(cfg.out).is_dir():
        raise EvalError(f"--out {cfg.out} is a directory: give the path of the JSON file to write")


def check_positive(error: type, **values: int) -> None:
    """`error` naming the first of `values` (flag name -> value) that is below 1."""
    for name, value in values.items():
        if value < 1:
            raise error(f"{name}={value} is invalid: --{name.replace('_', '-')} must be at least 1")


def run_core_eval(cfg: CoreEvalConfig) -> tuple[CoreEval, Path]:
    """Evaluate a saved SAE as `cfg` says and write the JSON; returns the result and the JSON's path."""
    from scaffold_sae import fetch
    from scaffold_sae.report import jsonable

    check_eval_request(cfg)
    opened = SAESource.of(cfg).open(EvalError, check_batchtopk_able if cfg.inference == "batchtopk" else None)
    sae_path, sae, lm, model_spec, layer = opened.path, opened.sae, opened.lm, opened.model, opened.layer
    # twice the tokens: CE and statistics on the first half, the mean-ablation mean fitted on the second
    contexts = opened.contexts(2 * cfg.tokens, cfg.ctx_len)
    if contexts.shape[0] < 2:
        raise EvalError(f"the {cfg.corpus} corpus gives {contexts.shape[0]} held-out context(s) of {cfg.ctx_len} "
                        "tokens: need two (one to evaluate, one to fit the mean-ablation mean); lower --ctx-len")
    n_eval = min(-(-cfg.tokens // cfg.ctx_len), contexts.shape[0] - 1)
    mean = mean_activation(lm, int(layer), contexts[n_eval:], cfg.batch_size, False)
    result = evaluate(sae, lm, int(layer), contexts[:n_eval], batch_size=cfg.batch_size, inference=cfg.inference,
                      mean_resid=mean)
    out = Path(cfg.out) if cfg.out else opened.beside(f"eval-{cfg.inference}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"sae": str(sae_path), "model": model_spec, "layer": int(layer), "corpus": cfg.corpus,
               "tokens": cfg.tokens, "ctx_len": cfg.ctx_len, "inference": cfg.inference,
               "mean_fit": "held-out contexts after the evaluated ones", "eval": asdict(result)}
    fetch.atomic_write_text(out, json.dumps(jsonable(payload), indent=1, allow_nan=False) + "\n")
    return result, out


def sae_metadata(sae) -> dict[str, Any]:
    """Model spec and layer recorded with a saved SAE (sae.metadata from saving.load_sae), as {model, layer}."""
    raw = getattr(sae, "metadata", None) or {}
    meta: dict[str, Any] = {}
    for key in ("model", "model_spec", "model_name"):
        if raw.get(key):
            meta["model"] = str(raw[key])
            break
    for key in ("layer", "hook_layer"):
        if raw.get(key) is not None:
            meta["layer"] = int(raw[key])
            break
    hook = str(raw.get("hook_name") or "")
    if "layer" not in meta and hook.startswith("blocks.") and hook.split(".")[1].isdigit():
        meta["layer"] = int(hook.split(".")[1])
    return meta
