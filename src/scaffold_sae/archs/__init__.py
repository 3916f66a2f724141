"""The architecture registry: one module per sparse-dictionary rule, looked up by SAEConfig.arch.

    from scaffold_sae import archs
    archs.get("batchtopk").inference_modes      # ("batchtopk", "threshold")
    archs.register(MyArch())                    # a new architecture: no edits elsewhere

See docs/architecture.md for a worked example.
"""

from __future__ import annotations

from .base import Architecture, SparseStep, active_values, codes_at, threshold_codes
from .batchtopk import BatchTopK
from .jumprelu import JumpReLU
from .matryoshka import Matryoshka
from .relu import ReLU
from .topk import TopK

_REGISTRY: dict[str, Architecture] = {}


class UnknownArchitecture(ValueError):
    """An architecture name nobody registered; the message lists the registered ones."""


def register(arch: Architecture, replace: bool = False) -> Architecture:
    """Make ``arch`` available as SAEConfig(arch=arch.name); returns it."""
    if not arch.name:
        raise ValueError(f"{type(arch).__name__} has no name: set the class attribute `name`")
    if arch.name in _REGISTRY and not replace:
        raise ValueError(f"architecture {arch.name!r} is already registered: pick another name or pass replace=True")
    _REGISTRY[arch.name] = arch
    return arch


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def find(name: object) -> Architecture | None:
    """The registered architecture called ``name``, or None (SAEs from elsewhere carry other names)."""
    return _REGISTRY.get(name) if isinstance(name, str) else None


def get(name: str) -> Architecture:
    arch = find(name)
    if arch is None:
        raise UnknownArchitecture(f"unknown SAE architecture {name!r}: registered architectures are "
                                  f"{', '.join(names(load_only=True))} (add one with scaffold_sae.archs.register)")
    return arch


def names(load_only: bool = False) -> list[str]:
    """Registered names in registration order: the trainable ones, plus the load-only ones if asked."""
    return [name for name, arch in _REGISTRY.items() if arch.trainable or load_only]


for _arch in (BatchTopK(), Matryoshka(), TopK(), ReLU(), JumpReLU()):
    register(_arch)
del _arch

__all__ = ["Architecture", "SparseStep", "UnknownArchitecture", "active_values", "codes_at", "find", "get",
           "names", "register", "threshold_codes", "unregister"]
