"""The config is the CLI: flags come from config dataclasses, config files and flags coerce alike."""

import ast
import json
from dataclasses import fields
from pathlib import Path

import pytest

from scaffold_sae import cli
from scaffold_sae.config import ConfigError, build, coerce_field, field_docs
from scaffold_sae.study import StudyConfig
from scaffold_sae.trainer import configs_from_dict

SRC = Path(cli.__file__).parent
TRAIN = cli.find_command("train")


def _squash(text: str) -> str:
    return "".join(text.split())


@pytest.mark.parametrize("command", cli.COMMANDS, ids=lambda c: c.name)
def test_help_lists_every_config_field_with_its_docstring(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([command.name, "--help"])
    assert done.value.code == 0
    text = _squash(capsys.readouterr().out)
    for cls, f in command.flag_fields():
        doc = field_docs(cls).get(f.name)
        assert doc, f"{cls.__name__}.{f.name} has no docstring"
        flag = f.name.upper() if f.name in command.positional else command.switches.get(
            f.name, "--" + f.name.replace("_", "-"))
        assert flag in text, (command.name, flag)
        assert _squash(doc) in text, (command.name, f.name)
    flagged = command.flag_fields()
    for cls in command.configs:  # only declared exclusions, and names a later dataclass also has, get no flag
        for f in fields(cls):
            assert f.name in command.exclude or (cls, f) in flagged or any(
                g.name == f.name and later is not cls for later, g in flagged), (command.name, f.name)


def test_a_config_file_value_and_the_same_flag_coerce_alike(tmp_path):
    flags = {"width": "64", "k": "8", "ranks": "0,4", "scaffold_tied": "true", "lr": "0.001",
             "matryoshka_widths": "16,32,64", "aux_k": "none", "tokens": "1000", "batch_size": "100"}
    typed = {"width": 64, "k": 8, "ranks": [0, 4], "scaffold_tied": True, "lr": 0.001,
             "matryoshka_widths": [16, 32, 64], "aux_k": None, "tokens": 1000, "batch_size": 100}
    config = tmp_path / "run.yaml"
    config.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in typed.items()))
    parsed = cli.build_parser().parse_args(["train", "--config", str(config)])
    from_file = configs_from_dict(TRAIN.values(parsed))
    parsed = cli.build_parser().parse_args(["train", *(a for k, v in flags.items()
                                                      for a in ("--" + k.replace("_", "-"), v))])
    from_flags = configs_from_dict(TRAIN.values(parsed))
    assert from_file == from_flags
    assert from_flags[0][1].scaffold_tied and from_flags[0][1].matryoshka_widths == (16, 32, 64)

    study_file = tmp_path / "study.json"
    study_file.write_text(json.dumps({"ranks": [0, 8], "scaffold_tied": True, "lr": 1e-3, "layer": None}))
    assert build(StudyConfig, json.loads(study_file.read_text())) == build(
        StudyConfig, {"ranks": "0,8", "scaffold_tied": "yes", "lr": "1e-3", "layer": "none"})


def test_flags_override_the_config_file(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"width": 32, "k": 4, "cache": "c", "out": "o"}))
    args = cli.build_parser().parse_args(["train", "--config", str(config), "--k", "2", "--no-progress", "--slow"])
    values = TRAIN.values(args)
    assert values == {"width": 32, "k": "2", "cache": "c", "out": "o", "progress": False, "fast": False}
    assert TRAIN.argv(args) == ["--config", str(config), "--k", "2", "--slow", "--no-progress"]


def test_coercion_errors_name_the_field_and_type():
    with pytest.raises(ConfigError, match=r"^width='abc' is invalid: expected int$"):
        coerce_field("width", "abc", "int")
    with pytest.raises(ConfigError, match=r"^flag='maybe' is invalid: expected bool$"):
        coerce_field("flag", "maybe", "bool")
    with pytest.raises(ConfigError, match="unknown config field 'widht' in x.yaml: allowed fields are"):
        build(StudyConfig, {"widht": 3}, where=" in x.yaml")
    assert coerce_field("results", "a=1,b", "list[str]") == ["a=1", "b"]


def test_only_the_cli_module_imports_argparse():
    importers = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[0] == "argparse" for name in names):
                importers.append(str(path.relative_to(SRC)))
    assert importers == ["cli.py"]


def test_commands_fail_with_one_line_before_heavy_work(tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"config": {"model": "m", "layer": 1}, "saes": {}}))
    for argv, message in ((["compare", "--results", f"a={results}", "--out", str(tmp_path / "o")], "has no analyses"),
                          (["harvest", "--model", "nowhere", "--layer", "0", "--out", str(tmp_path / "c"),
                            "--dtype", "float64"], "dtype='float64' is invalid: allowed values are float32, float16"),
                          (["eval", "--sae", str(tmp_path), "--inference", "topk"], "inference='topk' is invalid"),
                          (["train", "--cache", "c", "--out", "o", "--width", "wide"],
                           "width='wide' is invalid: expected int")):
        with pytest.raises(SystemExit) as done:
            cli.main(argv)
        err = capsys.readouterr().err.strip()
        assert done.value.code == 2 and err.count("\n") == 0 and message in err, (argv, err)
