"""The config tree: one build for files and flags at any depth, one-line errors that say the fix, and the generated
reference in docs/config.md."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scaffold_sae import cli
from scaffold_sae.config import (LEGACY, ConfigError, build, setting, to_dict, tree_fields, tree_keys)
from scaffold_sae.study import StudyConfig

DOCS = Path(__file__).resolve().parents[1] / "docs" / "config.md"


@dataclass
class Leafy:
    """The deepest section."""

    depth: int = 3
    """How deep it is."""
    names: list[str] = field(default_factory=lambda: ["a"])
    """Some names."""


@dataclass
class Middle:
    """A section holding a section."""

    inner: Leafy = field(default_factory=Leafy)
    """The inner section."""
    scale: float = 1.0
    """A scale."""
    seed: int = 0
    """Set by the root, so the tree leaves it out."""


@dataclass
class Root:
    """A tree three levels deep, like StudyConfig with a plan section added."""

    middle: Middle = field(default_factory=lambda: Middle(scale=2.0), metadata={"omit": {"seed": "seed"}})
    """The middle section."""
    seed: int = 0
    """The root's seed."""


def test_any_nested_dataclass_is_a_section_at_any_depth():
    assert [path for path, _, _ in tree_fields(Root)] == ["middle.inner.depth", "middle.inner.names", "middle.scale",
                                                         "seed"]
    nested = build(Root, {"middle": {"inner": {"depth": "5", "names": "x,y"}}, "seed": "7"})
    dotted = build(Root, {"middle.inner.depth": 5, "middle.inner.names": ["x", "y"], "seed": 7})
    assert nested == dotted == Root(Middle(Leafy(5, ["x", "y"]), scale=2.0), seed=7)
    assert to_dict(nested) == {"middle": {"inner": {"depth": 5, "names": ["x", "y"]}, "scale": 2.0}, "seed": 7}
    assert build(Root, to_dict(nested)) == nested
    assert build(Root, {"middle.scale": 3}, base=nested).middle.inner.depth == 5          # the rest from base
    assert build(Root, {}).middle.scale == 2.0                                          # the parent's default


def test_the_study_tree_round_trips_through_its_dict_and_json():
    cfg = build(StudyConfig, {"train.lr": "1e-3", "sae": {"ranks": "0,8", "seeds": 3},
                              "analyses.ablation_table.ablation_operators": "zero", "harvest.layer": "none"})
    assert (cfg.train.lr, cfg.sae.ranks, cfg.analyses.ablation_table.ablation_operators) == (1e-3, [0, 8], "zero")
    assert build(StudyConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg
    assert "seed" not in to_dict(cfg)["train"] and "rank" not in to_dict(cfg)["sae"]   # set by the study
    assert cfg.train_config().seed == cfg.seed and cfg.train_config().tokens == 1_228_800
    assert set(LEGACY.values()) <= set(tree_keys(StudyConfig))                      # every old key has a place


@pytest.mark.parametrize("values, message", [
    ({"sae": {"widht": 3}}, "unknown config key 'sae.widht' in run.yaml: did you mean sae.width?"),
    ({"train.lrr": 3}, "unknown config key 'train.lrr' in run.yaml: did you mean train.lr?"),
    ({"widht": 3}, "unknown config key 'widht' in run.yaml: did you mean sae.width?"),
    ({"steps_tokens": 3}, "unknown config key 'steps_tokens' in run.yaml: it moved to train.tokens"),
    ({"analyses": False}, "analyses=False in run.yaml is invalid: analyses is a section of the config; it moved to "
                          "analyses.enabled"),
    ({"train": {"seed": 1}}, "train.seed in run.yaml cannot be set: the study's seed sets it"),
    ({"sae": {"k": "many"}}, "sae.k='many' in run.yaml is invalid: expected int"),
    ({"harvest": 3}, "harvest=3 in run.yaml is invalid: harvest is a section of the config; give its keys, e.g. "
                     "harvest.model"),
])
def test_a_bad_key_or_value_is_one_line_with_the_fix(values, message):
    with pytest.raises(ConfigError) as error:
        build(StudyConfig, values, where=" in run.yaml")
    assert str(error.value) == message


def test_setting_reads_the_tree_and_flat_configs_from_before_it():
    tree = to_dict(build(StudyConfig, {"sae.scaffold_init": "random", "analyses.rank": 8}))
    flat = {"scaffold_init": "random", "analysis_rank": 8, "analyses": True}
    for config in (tree, flat):
        assert setting(config, "sae.scaffold_init") == "random" and setting(config, "analyses.rank") == 8
    assert setting({}, "harvest.model", "m") == "m"


def run_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])}   # this checkout's package, from cwd
    return subprocess.run([sys.executable, "-m", "scaffold_sae", *argv], capture_output=True, text=True, cwd=cwd,
                          env=env)


def test_the_command_line_names_the_file_or_the_flag_and_writes_nothing(tmp_path):
    (tmp_path / "typo.yaml").write_text("train:\n  lrr: 0.1\n")
    (tmp_path / "old.yaml").write_text("steps_tokens: 1000\n")
    (tmp_path / "broken.yaml").write_text("sae: [1\n")
    for argv, message in ((["study", "--config", "typo.yaml"],
                           "error: unknown config key 'train.lrr' in typo.yaml: did you mean train.lr?"),
                          (["study", "--config", "old.yaml"],
                           "error: unknown config key 'steps_tokens' in old.yaml: it moved to train.tokens"),
                          (["study", "--train.lrr", "3"],
                           "error: unknown flag --train.lrr for `scaffold-sae study`: did you mean --train.lr?"),
                          (["demo", "--widht", "3"],
                           "error: unknown flag --widht for `scaffold-sae demo`: did you mean --width?"),
                          (["study", "--config", "broken.yaml"], "error: config file broken.yaml does not parse: ")):
        result = run_cli(*argv, cwd=tmp_path)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, (argv, result.stderr)
        assert result.stderr.startswith(message), (argv, result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.yaml", "old.yaml", "typo.yaml"]


def test_a_flat_command_config_file_names_the_file_and_the_nearest_key():
    train = cli.find_command("train")
    with pytest.raises(ConfigError, match=r"^unknown config key 'widht' in x.yaml: did you mean width\?$"):
        train.check_file({"widht": 3}, " in x.yaml")
    with pytest.raises(ConfigError, match=r"^k='many' in x.yaml is invalid: expected int$"):
        train.check_file({"k": "many"}, " in x.yaml")


def test_docs_config_md_matches_the_code():
    assert DOCS.read_text() == cli.config_reference(), \
        "docs/config.md is stale: regenerate it with `python -m scaffold_sae.config > docs/config.md`"
