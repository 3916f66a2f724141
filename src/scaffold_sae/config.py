"""Config dataclasses from plain values: one coercion for command-line text and YAML/JSON config files.

A config is a ``@dataclass`` with a docstring under each field; ``field_docs`` reads those docstrings (the
command line uses them as ``--help``), ``build`` turns a mapping of field name -> value (strings from flags,
or typed values from a file) into the dataclass, and ``load_config_file`` reads a YAML or JSON file of them.
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import re
import textwrap
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any, Mapping


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field and the allowed values."""


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it in the class body), whitespace collapsed."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not hasattr(klass, "__dataclass_fields__"):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def has_default(f: Field) -> bool:
    return f.default is not MISSING or f.default_factory is not MISSING


def sequence_type(annotation: str) -> tuple[str, str] | None:
    """('list' | 'tuple', item type name) for an annotation like ``list[int]`` or ``tuple[int, ...] | None``."""
    match = re.match(r"\s*(list|tuple)\[(\w+)", annotation)
    return (match.group(1), match.group(2)) if match else None


def coerce_field(name: str, value: object, annotation: str) -> object:
    """A config value (from YAML/JSON or a command-line string) as the field's annotated type, or ConfigError.

    ``annotation`` is the field's type as text (``int``, ``float | None``, ``list[int]``, ...); sequences of
    ints and strings may also be given as one comma-separated string."""
    try:
        if isinstance(value, str) and value.lower() in ("none", "null") and "None" in annotation:
            return None
        sequence = sequence_type(annotation)
        if sequence and value is not None:
            kind, item = sequence
            if isinstance(value, str):
                value = [v for v in value.split(",") if v.strip()]
            convert = {"int": int, "float": float, "str": str}.get(item)
            if convert is None:
                return value
            return (list if kind == "list" else tuple)(convert(v) for v in value)
        if "bool" in annotation:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if value is None:
            if "None" in annotation:
                return None
            raise ValueError
        if annotation.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) else int(value)
        if annotation.startswith("float"):
            return float(value)
        if annotation.startswith("str"):
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} is invalid: expected {annotation}") from None
    return value


def build(cls: type, values: Mapping[str, Any], where: str = ""):
    """``cls(**values)`` with every value coerced to its field's type; unknown or missing fields are ConfigErrors.

    ``where`` ends the unknown-field message (e.g. `` in run.yaml``)."""
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown config field {unknown[0]!r}{where}: allowed fields are {', '.join(sorted(names))}")
    kwargs = {f.name: coerce_field(f.name, values[f.name], str(f.type)) for f in fields(cls) if f.name in values}
    for f in fields(cls):
        if f.name not in kwargs and not has_default(f):
            raise ConfigError(f"{f.name} is missing: pass --{f.name.replace('_', '-')}")
    return cls(**kwargs)


def load_config_file(path: str | Path) -> dict:
    """The mapping of field: value in a YAML (.yaml, .yml) or JSON file, or ConfigError."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as error:  # noqa: BLE001 - yaml and json raise different types
        raise ConfigError(f"config file {path} does not parse: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of field: value")
    return data


LEGACY: dict[str, str] = {
    **{name: f"harvest.{name}" for name in ("model", "layer", "corpus", "ctx_len", "train_tokens", "eval_tokens",
                                            "ce_tokens", "sink_factor", "cache_dir")},
    "harvest_batch_size": "harvest.batch_size",
    **{name: f"sae.{name}" for name in ("arch", "width", "k", "ranks", "seeds", "baselines", "encoder_input",
                                        "scaffold_tied", "scaffold_init", "scaffold_lr_mult", "scaffold_centred")},
    "steps_tokens": "train.tokens",
    **{name: f"train.{name}" for name in ("batch_size", "lr", "until_converged", "converge_tol", "converge_frac",
                                          "heldout_every", "heldout_tokens")},
    "analyses": "analyses.enabled", "analysis_seeds": "analyses.seeds", "analysis_rank": "analyses.rank",
    "analysis_tokens": "analyses.tokens", "analysis_ce_tokens": "analyses.ce_tokens",
    "bootstrap_samples": "analyses.bootstrap_samples",
    "outlier_factor": "analyses.structure.outlier_factor",
    "random_seeds": "analyses.causality.random_seeds",
    **{name: f"analyses.ablation_table.{name}" for name in ("ablation_operators", "ablation_positions",
                                                            "ablation_subjects", "ablation_random_bases")},
    "redundancy_factor": "analyses.redundancy.redundancy_factor",
    **{name: f"analyses.probing.{name}" for name in ("probe_docs", "probe_tokens", "probe_datasets", "probe_splits",
                                                     "probe_ks")},
    **{name: f"analyses.topic_ablation.{name}" for name in ("topic_datasets", "topic_docs")},
    "browse": "browse.enabled", "browse_tokens": "browse.tokens",
}
"""Where each field of the flat study config (results written before the config tree, 2026-12-03) lives in the tree."""


def setting(config: Mapping[str, Any], path: str, default: Any = None) -> Any:
    """One setting of a study's stored config (results.json's "config") by its dotted place in the config tree, e.g.
    ``setting(study["config"], "sae.scaffold_init")``; a flat config written before the tree is read through LEGACY."""
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            break
        node = node[part]
    else:
        return node
    old = next((flat for flat, new in LEGACY.items() if new == path), None)
    return config.get(old, default) if old is not None and not isinstance(config.get(old), Mapping) else default


__all__ = ["ConfigError", "field_docs", "coerce_field", "build", "load_config_file", "sequence_type", "has_default",
           "LEGACY", "setting"]
