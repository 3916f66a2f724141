"""config.setting reads a stored study setting by its place in the config tree, from nested and flat configs."""

from scaffold_sae.config import LEGACY, setting


def test_setting_reads_the_tree_and_flat_configs_alike():
    nested = {"sae": {"scaffold_init": "random"}, "analyses": {"enabled": False}, "train": {"tokens": 5}}
    flat = {"scaffold_init": "random", "analyses": False, "steps_tokens": 5}
    for path, expected in (("sae.scaffold_init", "random"), ("analyses.enabled", False), ("train.tokens", 5)):
        assert setting(nested, path) == expected
        assert setting(flat, path) == expected
    assert setting({}, "sae.k", 7) == 7
    assert setting(flat, "sae.no_such_field", "x") == "x"


def test_legacy_paths_are_distinct():
    assert len(set(LEGACY.values())) == len(LEGACY)
