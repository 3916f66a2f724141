"""A saved SAE and what it reads (`SAESource`): the one way eval, browse and diagnose open an SAE, its language
model at its layer, and the corpus.

Order of the checks: everything that needs no model comes first (the SAE path and files, its recorded model and
layer, the corpus, the device), then the model loads, then the layer range and the SAE's input size against the
model's d_model. Each failure is one line naming the fix, raised as the caller's error type.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch


@dataclass
class OpenedSAE:
    """A saved SAE with the language model and layer it reads, and the corpus."""

    path: Path
    sae: Any
    lm: Any
    model: str
    layer: int
    corpus: Any
    """scaffold_sae.corpus.Corpus."""

    def contexts(self, n_tokens: int, ctx_len: int, split: str = "heldout") -> torch.Tensor:
        """[N, ctx_len] contexts (each starting with BOS) of the corpus's `split`."""
        from scaffold_sae.corpus import pack_contexts

        return pack_contexts(self.lm.tokenizer, self.corpus, ctx_len=ctx_len, n_tokens=n_tokens, split=split,
                             bos_id=self.lm.bos_token_id)

    def beside(self, name: str) -> Path:
        """`name` next to the SAE: inside its directory, or beside a single-file SAE."""
        return (self.path if self.path.is_dir() else self.path.parent) / name


@dataclass
class SAESource:
    """Which saved SAE to open, on which model, layer, corpus and device."""

    sae: str
    """Saved SAE (ours, SAELens or sparsify format)."""
    model: str | None = None
    """Model spec (default: from the SAE's metadata)."""
    layer: int | None = None
    """Residual layer (default: from the SAE's metadata)."""
    corpus: str = "news"
    """Corpus spec; its held-out split is read (diagnose fits on its train split)."""
    device: str = "cpu"
    """torch device: cpu | cuda | cuda:N | auto."""

    @classmethod
    def of(cls, cfg: Any) -> "SAESource":
        """The source named by a command's config (any object with fields sae, model, layer, corpus, device)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})

    def open(self, error: type = ValueError, check: Callable[[Any], None] | None = None) -> OpenedSAE:
        """Load the SAE, the corpus and the model (in that order); `check(sae)` runs before the model loads."""
        from scaffold_sae import corpus as corpus_mod
        from scaffold_sae import models, saving
        from scaffold_sae.devices import resolve_device
        from scaffold_sae.evals import sae_metadata

        path = Path(self.sae)
        if not path.exists():
            raise error(f"SAE path {path} does not exist: pass a directory or file written by save_sae")
        sae = saving.load_sae(path).eval()
        meta = sae_metadata(sae)
        model_spec = self.model or meta.get("model")
        layer = self.layer if self.layer is not None else meta.get("layer")
        if model_spec is None or layer is None:
            raise error(f"{path} does not record its model and layer: pass --model and --layer")
        if int(layer) < 0:
            raise error(f"layer={layer} is invalid: pass a layer index 0..n_layers-1")
        if check is not None:
            check(sae)
        corpus = corpus_mod.load_corpus(self.corpus)
        device = resolve_device(self.device)
        lm = models.load_model(model_spec, device=device)
        lm.check_layer(int(layer))
        d_in = int(sae.W_dec.shape[1])
        if d_in != lm.d_model:
            raise error(f"the SAE {path} has input size {d_in} but {model_spec} has d_model {lm.d_model}: pass the "
                        f"--model and --layer it was trained on")
        return OpenedSAE(path, sae.to(device), lm, str(model_spec), int(layer), corpus)
