"""The study configs left in results/configs (the ones legacy scripts still read: design-seeds-gemma3's command.sh and
training-budget-gemma3's add_seed.py): each loads as a valid StudyConfig (a renamed or removed field would break
those scripts), and each trains at least 3 seeds or says which 3-seed experiment supersedes it. Every other study is
an experiment file (experiments/*.yaml)."""

from pathlib import Path

import pytest

from scaffold_sae.config import build, load_config_file
from scaffold_sae.study import StudyConfig

CONFIGS = sorted((Path(__file__).parents[1] / "results" / "configs").glob("*.yaml"))


def test_there_are_experiment_configs():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_an_experiment_config_is_valid_and_has_three_seeds_or_names_its_successor(path):
    cfg = build(StudyConfig, load_config_file(path)).validate()
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert cfg.sae.seeds >= 3 or "Superseded by:" in header, f"{path.name}: {cfg.sae.seeds} seed(s) and no successor named"
