"""Config dataclasses from plain values: one coercion for command-line text and YAML/JSON config files.

A config is a ``@dataclass`` with a docstring under each field; ``field_docs`` reads those docstrings (the
command line uses them as ``--help``), ``build`` turns a mapping of field name -> value (strings from flags,
or typed values from a file) into the dataclass, and ``load_config_file`` reads a YAML or JSON file of them.
"""

from __future__ import annotations

import ast
import copy
import difflib
import functools
import inspect
import json
import re
import textwrap
import typing
from dataclasses import MISSING, Field, fields, is_dataclass, replace
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


def default_value(f: Field) -> Any:
    """A field's default (a fresh one from its default_factory), or None when it has none."""
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None if f.default is MISSING else f.default


def annotation(f: Field) -> str:
    """A field's type as text (``int``, ``list[int] | None``), whether or not its module postpones annotations."""
    if isinstance(f.type, str):
        return f.type
    return f.type.__name__ if isinstance(f.type, type) else str(f.type).replace("typing.", "")


def sequence_type(annotation: str) -> tuple[str, str] | None:
    """('list' | 'tuple', item type name) for an annotation like ``list[int]`` or ``tuple[int, ...] | None``."""
    match = re.match(r"\s*(list|tuple)\[(\w+)", annotation)
    return (match.group(1), match.group(2)) if match else None


def coerce_field(name: str, value: object, annotation: str, where: str = "") -> object:
    """A config value (from YAML/JSON or a command-line string) as the field's annotated type, or ConfigError.

    ``annotation`` is the field's type as text (``int``, ``float | None``, ``list[int]``, ...); sequences of
    ints and strings may also be given as one comma-separated string. ``where`` (e.g. `` in run.yaml``) follows
    the value in the error."""
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
        raise ConfigError(f"{name}={value!r}{where} is invalid: expected {annotation}") from None
    return value


# ------------------------------------------------------------------------------------------ the config tree
# A config may nest: a field whose type is a dataclass is a node (its own fields below it), at any depth. Its keys
# are the dotted paths of the leaves (train.lr, analyses.ablation_table.ablation_operators); a file may give them
# nested (train: {lr: ...}) or dotted, the command line as flags (--train.lr). A node's field metadata may name
# fields of the child that the tree leaves out, each with what sets it instead ({"omit": {"seed": "seed"}}).


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve is a leaf
        return {}


def node_type(cls: type, f: Field) -> type | None:
    """The dataclass type of a field that is a sub-config (a node of the tree), else None (a leaf)."""
    hint = _hints(cls).get(f.name)
    return hint if isinstance(hint, type) and is_dataclass(hint) else None


def omitted(f: Field) -> Mapping[str, str]:
    """Fields of a node's dataclass that the tree leaves out -> what sets them instead."""
    return f.metadata.get("omit", {})


def tree_fields(cls: type, prefix: str = "", omit: Mapping[str, str] = {}) -> list[tuple[str, type, Field]]:
    """(dotted path, owning dataclass, field) of every leaf of the config tree under ``cls``, in declaration order."""
    out = []
    for f in fields(cls):
        if f.name in omit or not f.init:
            continue
        child = node_type(cls, f)
        if child is None:
            out.append((prefix + f.name, cls, f))
        else:
            out += tree_fields(child, f"{prefix}{f.name}.", omitted(f))
    return out


def tree_nodes(cls: type, prefix: str = "", omit: Mapping[str, str] = {}) -> list[tuple[str, type, Field]]:
    """(dotted path, the dataclass declaring it, its field) of every node (section) under ``cls``."""
    out = []
    for f in fields(cls):
        child = node_type(cls, f)
        if child is not None and f.name not in omit:
            out += [(prefix + f.name, cls, f), *tree_nodes(child, f"{prefix}{f.name}.", omitted(f))]
    return out


def lookup(config: Any, path: str) -> Any:
    """The value at a dotted path of a config dataclass."""
    for part in path.split("."):
        config = getattr(config, part)
    return config


def to_dict(config: Any, omit: Mapping[str, str] = {}) -> dict[str, Any]:
    """The config tree as nested plain values (what a config file holds and results.json stores); what ``build``
    reads back to an equal config."""
    out = {}
    for f in fields(config):
        if f.name in omit or not f.init:
            continue
        value = getattr(config, f.name)
        if node_type(type(config), f) is not None:
            out[f.name] = to_dict(value, omitted(f))
        else:
            out[f.name] = list(value) if isinstance(value, tuple) else copy.deepcopy(value)
    return out


def nest(values: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys (``train.lr: 1e-3``) as nested mappings (``train: {lr: 1e-3}``), at any depth; nested input is
    kept, and a later key wins where two give the same leaf."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        *parents, leaf = str(key).split(".")
        node = out
        for i, part in enumerate(parents):
            if part in node and not isinstance(node[part], dict):
                raise ConfigError(f"{key} and {'.'.join(parents[:i + 1])}={node[part]!r} conflict: "
                                  f"{'.'.join(parents[:i + 1])} is a section of the config")
            node = node.setdefault(part, {})
        if isinstance(value, Mapping):
            node[leaf] = merge(node[leaf] if isinstance(node.get(leaf), dict) else {}, nest(value))
        else:
            node[leaf] = value
    return out


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s values on top, nested mappings merged key by key (a config file, then flags)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def tree_keys(cls: type) -> list[str]:
    """Every key of the config tree under ``cls``: the dotted paths of its leaves, then of its sections."""
    return [p for p, _, _ in tree_fields(cls)] + [p for p, _, _ in tree_nodes(cls)]


def nearest_key(valid: list[str], path: str) -> str:
    """How to fix an unknown key: where an old flat key (LEGACY) moved, or the nearest of the valid keys (difflib)."""
    if path in LEGACY and LEGACY[path] in valid:
        return f"it moved to {LEGACY[path]}"
    match = difflib.get_close_matches(path, valid, n=1, cutoff=0.6)
    if not match:  # the leaf name alone: widht -> sae.width, lr -> train.lr
        last = path.rsplit(".", 1)[-1]
        leaves = {}
        for p in valid:
            leaves.setdefault(p.rsplit(".", 1)[-1], p)
        match = [leaves[m] for m in difflib.get_close_matches(last, list(leaves), n=1, cutoff=0.6)]
    if match:
        return f"did you mean {match[0]}?"
    return f"valid keys are {', '.join(valid[:8])}{', ...' if len(valid) > 8 else ''} (docs/config.md lists them all)"


def build(cls: type, values: Mapping[str, Any], where: str = "", base: Any = None):
    """A config dataclass (a tree of them) from plain values, every value coerced to its field's type.

    ``values`` holds field: value, nested mappings for sub-configs and/or dotted keys (``train.lr``); fields not
    given keep ``base``'s values (default: the class's defaults). An unknown key, a value of the wrong type or a
    missing required field is a ConfigError of one line naming the key, ``where`` (e.g. `` in run.yaml``) and the fix.
    """
    return _build(cls, nest(values), where, copy.deepcopy(base), "", cls, {})


def _build(cls: type, values: Mapping[str, Any], where: str, base: Any, prefix: str, root: type,
           omit: Mapping[str, str]):
    names = {f.name for f in fields(cls) if f.init and f.name not in omit}
    for key in values:
        if key in omit:
            raise ConfigError(f"{prefix + str(key)}{where} cannot be set: {omit[key]} sets it")
        if key not in names:
            raise ConfigError(f"unknown config key {prefix + str(key)!r}{where}: "
                              f"{nearest_key(tree_keys(root), prefix + str(key))}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in values:
            continue
        value, path, child = values[f.name], prefix + f.name, node_type(cls, f)
        if child is None:
            kwargs[f.name] = coerce_field(path, value, annotation(f), where)
        elif not isinstance(value, Mapping):
            fix = (nearest_key(tree_keys(root), path) if path in LEGACY else
                   f"give its keys, e.g. {path}.{fields(child)[0].name}")
            raise ConfigError(f"{path}={value!r}{where} is invalid: {path} is a section of the config; {fix}")
        else:
            kwargs[f.name] = _build(child, value, where, getattr(base, f.name) if base is not None else
                                    default_value(f), path + ".", root, omitted(f))
    if base is not None:
        return replace(base, **kwargs)
    for f in fields(cls):
        if f.name not in kwargs and f.init and not has_default(f):
            flag = prefix + f.name if prefix else f.name.replace("_", "-")
            raise ConfigError(f"{prefix + f.name} is missing{where}: pass --{flag}")
    return cls(**kwargs)


def show_value(value: Any) -> str:
    """A default as it would be written on the command line (none, true, 0,8,24, 1,000,000)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if value == "":
        return '""'
    return f"{value:,}" if isinstance(value, int) and abs(value) >= 10_000 else str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference(cls: type, base: Any = None, heading: str = "###") -> str:
    """Markdown for the config tree under ``cls``: one table per section (key, default, meaning), each field's
    docstring its meaning; defaults from ``base`` (default: ``cls()``)."""
    base = cls() if base is None else base
    sections: dict[str, list[str]] = {}
    for path, owner, f in tree_fields(cls):
        section = path.rpartition(".")[0]
        row = f"| `{path}` | `{show_value(lookup(base, path))}` | {_cell(field_docs(owner).get(f.name, ''))} |"
        sections.setdefault(section, []).append(row)
    about = {path: field_docs(owner).get(f.name, "") for path, owner, f in tree_nodes(cls)}
    out = []
    for section, rows in sections.items():
        title = f"`{section}`" if section else "top level"
        text = about.get(section, "")
        out += [f"{heading} {title}", "", *([text, ""] if text else []), "| key | default | meaning |",
                "|---|---|---|", *rows, ""]
    return "\n".join(out)


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
        raise ConfigError(f"config file {path} does not parse: {' '.join(str(error).split())}") from None
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


def from_flat(config: Mapping[str, Any]) -> dict[str, Any]:
    """A stored study config (results.json's "config", study_config.json) as the tree's dotted keys, ready for
    ``build(StudyConfig, ...)``: a flat config written before the tree goes through LEGACY; a tree is kept."""
    return {LEGACY.get(key, key) if not isinstance(value, Mapping) else key: value for key, value in config.items()}


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
           "LEGACY", "setting", "tree_fields", "tree_nodes", "tree_keys", "node_type", "to_dict", "nest", "merge",
           "lookup", "nearest_key", "show_value", "reference", "annotation", "default_value", "from_flat"]


if __name__ == "__main__":  # python -m scaffold_sae.config > docs/config.md
    from scaffold_sae.cli import config_reference

    print(config_reference(), end="")
