"""Training curves: every SAE as it stood every `train.snapshot_every` steps, measured on held-out tokens.

The trainer saves the snapshots (`scaffold_sae.trainer.snapshot_path`: <train out>/snapshots/<name>/step_<N>/) the
way it saves the final SAE, folded and with its inference threshold calibrated. Here each snapshot, and the final
SAE, goes through the final evaluation (`evals.evaluate_many`, on held-out contexts never trained on, at the
architecture's primary inference: batch top-k, i.e. matched L0, for BatchTopK SAEs):

- dense latents: firing on more than 10% of the held-out tokens (position 0, BOS and sinks excluded);
- FVU of the full reconstruction (scaffold + sparse);
- CE loss score against zero ablation, (CE_zero - CE_sae) / (CE_zero - CE_clean), on the first `ce_contexts`;
- for a scaffold of rank r: the first and the median principal angle (degrees) between span(U) and the top-r
  principal components of the held-out activations.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from scaffold_sae import archs
from scaffold_sae.lm_passes import heldout_activations
from scaffold_sae.report import Figure, Section, Series, Table
from scaffold_sae.saving import OUR_CONFIG
from scaffold_sae.subspace import pca, principal_angles
from scaffold_sae.trainer import SNAPSHOTS


@dataclass
class CurvePoint:
    """One SAE at one step."""

    sae: str
    step: int
    tokens: int
    l0: float
    dense_10: int
    fvu: float
    ce_score: float | None
    first_angle: float | None
    """Smallest principal angle (degrees) between span(U) and the top-r PCs; None without a scaffold."""
    median_angle: float | None


def snapshots(sae_dir: str | Path) -> list[tuple[int, int, Path]]:
    """(step, training tokens, directory) of every snapshot of the SAE saved in ``sae_dir``, then of the final SAE
    itself, by step."""
    sae_dir = Path(sae_dir)
    found = [p for p in (sae_dir.parent / SNAPSHOTS / sae_dir.name).glob("step_*") if (p / OUR_CONFIG).is_file()]
    out = []
    for path in [*found, sae_dir]:
        summary = json.loads((path / OUR_CONFIG).read_text()).get("summary", {})
        out.append((int(summary.get("steps", 0)), int(summary.get("tokens", 0)), path))
    return sorted(out)


def measure(sae_dirs: Mapping[str, Path], lm, layer: int, contexts: torch.Tensor, ce_contexts: int,
            pca_tokens: int = 16_384, batch_size: int = 4, progress: bool = True) -> list[CurvePoint]:
    """Every snapshot of every SAE in ``sae_dirs`` (name -> final SAE directory), measured on ``contexts`` (CE on
    the first ``ce_contexts``; the PCs from up to ``pca_tokens`` rows of the contexts after those)."""
    from scaffold_sae.evals import evaluate_many
    from scaffold_sae.saving import load_sae

    saes, where = {}, {}
    for name, sae_dir in sae_dirs.items():
        for step, tokens, path in snapshots(sae_dir):
            key = f"{name}@{step}"
            saes[key], where[key] = load_sae(path).eval(), (name, step, tokens)
    modes = {key: archs.get(sae.cfg.arch).primary_inference for key, sae in saes.items()}
    results = evaluate_many(saes, lm, layer, contexts, batch_size=batch_size, inference=modes, progress=progress,
                            ce_contexts=ce_contexts)
    rest = contexts[ce_contexts:] if len(contexts) > ce_contexts else contexts
    components = pca(heldout_activations(lm, layer, rest, pca_tokens)).vectors
    points = []
    for key, sae in saes.items():
        result, first, median = results[key], None, None
        if sae.rank:
            angles = principal_angles(sae.U.detach().double().cpu(), components[:, :sae.rank])
            first, median = float(angles[0]), float(angles.median())
        points.append(CurvePoint(*where[key], result.l0, result.dense_10, result.fvu, result.ce_score_zero, first,
                                 median))
    return points


COLUMNS = (("dense >10%", "dense_10"), ("FVU", "fvu"), ("CE score", "ce_score"), ("first angle (deg)", "first_angle"),
           ("median angle (deg)", "median_angle"))


def section(points: list[CurvePoint]) -> Section:
    """The curves as a report section: one table row per SAE and step, one figure per measure against tokens."""
    rows = [[p.sae, p.step, p.tokens, round(p.l0, 2), *[getattr(p, key) for _, key in COLUMNS]] for p in points]
    figures = []
    for label, key in COLUMNS:
        series = []
        for name in dict.fromkeys(p.sae for p in points):
            mine = [p for p in points if p.sae == name and getattr(p, key) is not None]
            if mine:
                series.append(Series(name, [p.tokens / 1e6 for p in mine], [getattr(p, key) for p in mine]))
        if series:
            figures.append(Figure(f"{label} against training tokens", series, xlabel="training tokens (millions)",
                                  ylabel=label))
    text = ("Each SAE as it stood every train.snapshot_every steps, measured like the final SAE on held-out tokens "
            "never trained on: dense latents (> 10% of tokens), FVU of the full reconstruction, CE loss score against "
            "zero ablation, and the first and median principal angle between span(U) and the top-r PCs of the "
            "held-out activations (scaffolded SAEs only). The last row of each SAE is the final SAE.")
    table = Table(["sae", "step", "tokens", "L0", *[label for label, _ in COLUMNS]], rows)
    return Section("Training curves", text, tables=[table], figures=figures)


def to_json(points: list[CurvePoint]) -> list[dict[str, Any]]:
    return [asdict(p) for p in points]
