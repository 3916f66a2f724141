"""The language-model passes that evals and the analyses share: held-out residual rows, and forwards with an edited
residual stream (a reconstruction spliced in, a subspace or some latents ablated).

Conventions (one place): statistics and edits use the positions `eval_mask` keeps (not position 0, not BOS or
special tokens, not attention sinks); those keep their original activation in every edited forward, and the
prediction made at position 0 (the same in every condition) is left out of CE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_SINK_FACTOR = 10.0
"""Same default as the harvest: tokens with norm above this multiple of the context median are sinks."""

Rows = Callable[[Tensor], Tensor]
"""An edit of activation rows [n, d] -> [n, d] (applied at the eval_mask positions)."""


class NoTokensError(ValueError):
    """Contexts that leave no position to use."""


def batches(contexts: Tensor, batch_size: int, progress: bool, desc: str) -> Iterator[Tensor]:
    """Consecutive batches of contexts [N, T], with an optional progress bar."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    with tqdm(total=int(contexts.shape[0]), desc=desc, unit="ctx", disable=not progress, leave=False) as bar:
        for start in range(0, contexts.shape[0], batch_size):
            batch = contexts[start:start + batch_size]
            yield batch
            bar.update(batch.shape[0])


def eval_mask(lm, resid: Tensor, ids: Tensor, sink_factor: float) -> Tensor:
    """Positions [B, T] that count in statistics and get edited: not position 0, not BOS/special tokens, not
    attention sinks (norm above sink_factor x the context's median) -- the same rule the harvest applies."""
    from scaffold_sae.cache import keep_mask
    from scaffold_sae.corpus import resolve_bos

    bos = resolve_bos(lm.tokenizer, lm.bos_token_id) if lm.tokenizer is not None else lm.bos_token_id
    special = torch.tensor(sorted(set(lm.special_token_ids) - {bos}), dtype=torch.long)
    keep, _ = keep_mask(resid, ids.to(resid.device), -1 if bos is None else bos, special.to(resid.device),
                        sink_factor)
    keep[:, 0] = False
    return keep


@torch.no_grad()
def residual_rows(lm, layer: int, contexts: Tensor, batch_size: int = 8, sink_factor: float = DEFAULT_SINK_FACTOR,
                  progress: bool = False, desc: str = "activations") -> Iterator[Tensor]:
    """Per batch of contexts, the residual rows [n, d] after `layer` at the eval_mask positions (model dtype and
    device); each forward stops after that block."""
    for batch in batches(contexts, batch_size, progress, desc):
        resid = lm.residual(batch, layer)
        yield resid[eval_mask(lm, resid, batch, sink_factor)]


def heldout_activations(lm, layer: int, contexts: Tensor, n_tokens: int, batch_size: int = 8,
                        sink_factor: float = DEFAULT_SINK_FACTOR, progress: bool = False) -> Tensor:
    """Up to n_tokens residual rows [n, d] (float32, CPU) at the eval_mask positions of the first contexts."""
    rows, count = [], 0
    for x in residual_rows(lm, layer, contexts, batch_size, sink_factor, progress, "analysis: activations"):
        rows.append(x.float().cpu())
        count += x.shape[0]
        if count >= n_tokens:
            break
    if not count:
        raise NoTokensError("no held-out tokens to analyse: give contexts with at least 2 positions")
    return torch.cat(rows)[:n_tokens]


@torch.no_grad()
def position_class_rows(lm, layer: int, contexts: Tensor, n_tokens: int, batch_size: int = 8,
                        sink_factor: float = DEFAULT_SINK_FACTOR) -> tuple[Tensor, Tensor]:
    """Residual rows after `layer` (float32, CPU) of the first contexts, split by position class: up to n_tokens
    ordinary rows (eval_mask) and every special row (position 0, BOS / special tokens, attention sinks) of the same
    contexts. Means and resampling donors of an ablation are taken per class, so that BOS keeps a BOS-like value."""
    ordinary, special, count = [], [], 0
    for batch in batches(contexts, batch_size, False, "rows"):
        resid = lm.residual(batch, layer)
        keep = eval_mask(lm, resid, batch, sink_factor)
        ordinary.append(resid[keep].float().cpu())
        special.append(resid[~keep].float().cpu())
        count += ordinary[-1].shape[0]
        if count >= n_tokens:
            break
    if not count:
        raise NoTokensError("no held-out tokens to fit on: give contexts with at least 2 positions")
    return torch.cat(ordinary)[:n_tokens], torch.cat(special)


@torch.no_grad()
def clean_pass(lm, batch: Tensor, layer: int) -> tuple[Tensor, Tensor]:
    """One full forward: (logits [B, T, V], the residual after `layer` [B, T, d])."""
    captured: list[Tensor] = []

    def capture(resid: Tensor) -> Tensor:
        captured.append(resid)
        return resid

    logits = lm.logits(batch, layer=layer, edit=capture)
    return logits, captured[0]


def splice(resid: Tensor, keep: Tensor, rows: Rows | Tensor) -> Tensor:
    """A copy of resid [B, T, d] whose kept positions are replaced: by rows(resid[keep]) for an edit, or by the
    given rows [n_kept, d]."""
    out = resid.clone()
    out[keep] = (rows(resid[keep]) if callable(rows) else rows).to(resid.dtype)
    return out


@torch.no_grad()
def run_from(lm, batch: Tensor, layer: int, resid: Tensor) -> Tensor:
    """Logits [B, T, V] of the model with the residual after `layer` replaced by `resid` [B, T, d]: only blocks
    layer+1.. and the head run when that is exact for this model (checked once), else a full forward."""
    if skips_exactly(lm, layer, batch):
        return lm.logits_from(resid, layer)
    return lm.logits(batch, layer=layer, edit=lambda _resid: resid)


@torch.no_grad()
def skips_exactly(lm, layer: int, ids: Tensor) -> bool:
    """Whether running from the residual after `layer` (lm.logits_from) gives the full forward's logits, checked
    once per model and layer on a short prefix of `ids` (False for models that add position embeddings)."""
    known = getattr(lm, "skip_exact", None)
    if known is None or not hasattr(lm, "logits_from"):
        return False
    if layer not in known:
        probe = ids[:1, :min(8, ids.shape[1])]
        full = lm.logits(probe)
        fast = lm.logits_from(lm.residual(probe, layer), layer)
        known[layer] = bool((fast - full).abs().max() <= 1e-4 * (1.0 + full.abs().max()))
    return known[layer]


@torch.no_grad()
def residuals_after(lm, batch: Tensor, layer: int, resid: Tensor, read: list[int]) -> dict[int, Tensor]:
    """The residual after each block in `read` (> layer) with the residual after `layer` replaced by `resid`: from the
    cached layer when that is exact (run_from's check), else a full forward with the edit."""
    if skips_exactly(lm, layer, batch):
        return lm.residuals_from(resid, layer, read)
    captured: dict[int, Tensor] = {}
    handles = [lm.layers[j].register_forward_hook(
        lambda _m, _i, output, j=j: captured.__setitem__(j, output[0] if isinstance(output, (tuple, list)) else output))
        for j in read]
    try:
        lm.logits(batch, layer=layer, edit=lambda _resid: resid)
    finally:
        for handle in handles:
            handle.remove()
    return captured


ResidEdit = Callable[[Tensor, Tensor, int], Tensor]
"""An edit of a whole residual [B, T, d] given the ordinary positions [B, T] (eval_mask) and the batch's index:
returns the edited residual (the condition decides which positions it touches)."""


@dataclass
class ContextLosses:
    """Per-context sums of next-token CE and KL under each condition (for intervals over contexts)."""

    names: list[str]
    predictions: Tensor
    """[N] predictions per context (positions 1..T-2)."""
    clean: Tensor
    """[N] sum of clean CE (nats) per context."""
    ce: Tensor
    """[C, N] sum of CE per context under each condition."""
    kl: Tensor
    """[C, N] sum of KL(clean || condition) per context (nats)."""
    forwards: int
    """Forward passes from the layer (each one holds up to rows_per_forward contexts)."""


def prediction_logp(logits: Tensor) -> Tensor:
    """Log-probabilities [B, T-2, V] of the predictions made at positions 1..T-2 (float32)."""
    return torch.log_softmax(logits[:, 1:-1].float(), -1)


def _ce_of(logp: Tensor, ids: Tensor) -> Tensor:
    """Per-context sums of next-token CE from prediction_logp's log-probabilities."""
    return -logp.gather(-1, ids.to(logp.device)[:, 2:].unsqueeze(-1)).squeeze(-1).double().sum(1)


def _ce_kl(logits: Tensor, clean_logp: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Per-context sums of CE and of KL(clean || logits) over the predictions at positions 1..T-2, from one
    log-softmax over the vocabulary (with a 262k vocabulary that pass, not the blocks, is most of a condition's cost)."""
    logp = prediction_logp(logits)
    kl = (clean_logp.exp() * (clean_logp - logp)).sum(-1).double().sum(1)
    return _ce_of(logp, ids).cpu(), kl.cpu()


@torch.no_grad()
def condition_losses(lm, layer: int, contexts: Tensor, conditions: Mapping[str, ResidEdit], batch_size: int = 4,
                     rows_per_forward: int = 8, sink_factor: float = DEFAULT_SINK_FACTOR,
                     progress: bool = False) -> ContextLosses:
    """CE and KL per context, clean and under each condition. The residual after `layer` comes from one forward that
    stops there; the clean and every edited residual then run blocks layer+1.. and the head only (see run_from),
    several conditions stacked into one forward of up to rows_per_forward contexts."""
    names = list(conditions)
    n = contexts.shape[0]
    ce, kl = torch.zeros(len(names), n, dtype=torch.float64), torch.zeros(len(names), n, dtype=torch.float64)
    clean = torch.zeros(n, dtype=torch.float64)
    forwards, start = 0, 0
    if contexts.shape[1] < 3:
        raise NoTokensError("no predictions: contexts need at least 3 positions")
    for index, batch in enumerate(batches(contexts, batch_size, progress, desc=f"CE x{len(names) + 1}")):
        b = batch.shape[0]
        cols = slice(start, start + b)
        resid = lm.residual(batch, layer)
        ordinary = eval_mask(lm, resid, batch, sink_factor)
        clean_logits = run_from(lm, batch, layer, resid)
        forwards += 1
        clean_logp = prediction_logp(clean_logits)
        clean[cols] = _ce_of(clean_logp, batch).cpu()
        del clean_logits
        per_forward = max(1, rows_per_forward // b)
        for first in range(0, len(names), per_forward):
            group = names[first:first + per_forward]
            edited = torch.cat([conditions[name](resid, ordinary, index).to(resid.dtype) for name in group])
            logits = run_from(lm, batch.repeat(len(group), 1), layer, edited)
            forwards += 1
            for j, name in enumerate(group):
                c = names.index(name)
                ce[c, cols], kl[c, cols] = _ce_kl(logits[j * b:(j + 1) * b], clean_logp, batch)
            del logits, edited
        start += b
    predictions = torch.full((n,), float(contexts.shape[1] - 2), dtype=torch.float64)
    return ContextLosses(names, predictions, clean, ce, kl, forwards)


def next_token_ce(logits: Tensor, ids: Tensor) -> Tensor:
    """Next-token CE in nats of the predictions made at positions 1..T-2, [B, T-2]."""
    targets = ids.to(logits.device)[:, 1:]
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none")[:, 1:]


@torch.no_grad()
def ablation_ce(lm, layer: int, contexts: Tensor, edits: Mapping[str, Rows], batch_size: int = 4,
                sink_factor: float = DEFAULT_SINK_FACTOR, progress: bool = False,
                clean: bool = True) -> tuple[dict[str, float], int]:
    """Mean next-token CE (nats) clean and under each edit of the residual rows after `layer` (at the eval_mask
    positions); one full forward per condition and batch. Returns ({"clean": ce, name: ce, ...}, number of
    predictions); clean=False skips the clean CE (the residual still comes from one forward that stops at
    `layer`)."""
    totals = {**({"clean": 0.0} if clean else {}), **{name: 0.0 for name in edits}}
    count = 0
    for batch in batches(contexts, batch_size, progress, desc=f"CE x{len(totals)}"):
        if clean:
            logits, resid = clean_pass(lm, batch, layer)
            ce = next_token_ce(logits, batch)
            totals["clean"] += float(ce.double().sum())
            del logits
        else:
            resid = lm.residual(batch, layer)
        count += batch.shape[0] * max(0, batch.shape[1] - 2)
        keep = eval_mask(lm, resid, batch, sink_factor)
        for name, rows in edits.items():
            totals[name] += float(next_token_ce(run_from(lm, batch, layer, splice(resid, keep, rows)),
                                                batch).double().sum())
    if not count:
        raise NoTokensError("no predictions: contexts need at least 3 positions")
    return {name: total / count for name, total in totals.items()}, count
