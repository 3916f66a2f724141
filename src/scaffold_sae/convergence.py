"""The convergence rule of `train --until-converged`: held-out FVU measurements, and when they have stopped
improving (a relative gain below a tolerance over the last fraction of the steps)."""

from __future__ import annotations

import torch
from torch import Tensor

from .sae import HybridSAE


@torch.no_grad()
def heldout_fvu(sae: HybridSAE, rows: Tensor, chunk: int) -> float:
    """FVU of ``sae`` on held-out ``rows`` (in its training input space): the squared error summed over all rows
    over their total variance about their mean. Codes by inference over chunks of ``chunk`` rows (batch top-k over
    each chunk for the BatchTopK family, so L0 matches training), the same on every rank."""
    batch_topk = "batchtopk" in sae.architecture.inference_modes
    sse = rows.new_zeros((), dtype=torch.float64)
    for part in rows.split(chunk):
        err = (sae(part, batch_topk=batch_topk).x_hat - part).double()
        sse += torch.dot(err.flatten(), err.flatten())
    centred = rows.double() - rows.double().mean(0)
    return float(sse / torch.dot(centred.flatten(), centred.flatten()).clamp_min(1e-300))


def rule_holds(curve: list[tuple[int, float]], index: int, tol: float, frac: float, min_step: int = 0) -> bool:
    """The convergence rule at measurement ``index`` of ``curve`` ((step, FVU), increasing steps): its step is at
    least ``min_step``, and against the last earlier measurement at a step <= (1 - frac) x its step, FVU improved by
    less than ``tol`` (relative). False when there is no such earlier measurement."""
    step, fvu = curve[index]
    earlier = [f for s, f in curve[:index] if s <= step * (1 - frac) + 1e-9]
    if step < min_step or not earlier:
        return False
    return earlier[-1] - fvu < tol * earlier[-1]


def converged_since(curve: list[tuple[int, float]], tol: float, frac: float, min_step: int = 0) -> int | None:
    """The first step from which the rule has held at every measurement up to the last; None when it fails at the
    last one."""
    since = None
    for index, (step, _) in enumerate(curve):
        held = rule_holds(curve, index, tol, frac, min_step)
        since = (since if since is not None else step) if held else None
    return since


__all__ = ["converged_since", "heldout_fvu", "rule_holds"]
