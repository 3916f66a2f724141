"""The config is the CLI: flags come from config dataclasses, config files and flags coerce alike."""

import ast
import json
from dataclasses import MISSING
from pathlib import Path

import pytest

from scaffold_sae import cli
from scaffold_sae.config import ConfigError, build, coerce_field, field_docs, tree_fields
from scaffold_sae.study import StudyConfig
from scaffold_sae.trainer import configs_from_dict

SRC = Path(cli.__file__).parent
TRAIN = cli.find_command("train")


def _squash(text: str) -> str:
    return "".join(text.split())


@pytest.mark.parametrize("command", cli.COMMANDS, ids=lambda c: c.name)
def test_help_lists_every_config_field_with_its_docstring_and_default(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([command.name, "--help"])
    assert done.value.code == 0
    text = _squash(capsys.readouterr().out)
    for flag in command.flag_fields():
        doc = field_docs(flag.owner).get(flag.field.name)
        assert doc, f"{flag.owner.__name__}.{flag.field.name} has no docstring"
        name = flag.path.upper() if flag.path in command.positional else command.switches.get(
            flag.path, "--" + (flag.path if "." in flag.path else flag.path.replace("_", "-")))
        assert name in text, (command.name, name)
        default = command.default(flag)
        shown = "(required)" if default is MISSING else f"(default:{_squash(cli.show_value(default))})"
        assert _squash(doc) + shown in text, (command.name, flag.path)
    flagged = {(flag.config, flag.path) for flag in command.flag_fields()}
    for cls in command.configs:  # only declared exclusions, and names a later dataclass also has, get no flag
        for path, _, _ in tree_fields(cls):
            assert path in command.exclude or (cls, path) in flagged or any(
                p == path and c is not cls for c, p in flagged), (command.name, path)


def test_help_shows_the_defaults_a_new_user_asked_for(capsys):
    """Issue 31: harvest's 1M tokens, browse's 65,536 and diagnose's 262,144 training tokens, the study's tree."""
    for argv, wanted in ((["harvest"], ["--n-tokensN,--tokensN", "(default:1,000,000)", "(default:128)"]),
                         (["browse"], ["(default:65,536)"]), (["diagnose"], ["(default:262,144)"]),
                         (["study"], ["--train.lrX,--lrX", "(default:none)", "--train.tokensN,--steps-tokensN",
                                      "(default:1,228,800)", "--analyses.ablation_table.ablation_operatorsTEXT"])):
        with pytest.raises(SystemExit):
            cli.main([*argv, "--help"])
        text = _squash(capsys.readouterr().out)
        assert all(w in text for w in wanted), (argv, [w for w in wanted if w not in text])


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

    study_file = tmp_path / "study.yaml"
    study_file.write_text("sae:\n  ranks: [0, 8]\n  scaffold_tied: true\ntrain: {lr: 0.001}\nharvest.layer: null\n")
    study = cli.find_command("study")
    parsed = cli.build_parser().parse_args(["study", "--config", str(study_file)])
    from_file = build(StudyConfig, study.values(parsed))
    parsed = cli.build_parser().parse_args(["study", "--sae.ranks", "0,8", "--sae.scaffold_tied", "yes",
                                            "--train.lr", "1e-3", "--harvest.layer", "none"])
    assert from_file == build(StudyConfig, study.values(parsed))
    assert from_file.sae.ranks == [0, 8] and from_file.train.lr == 1e-3 and from_file.sae.scaffold_tied


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
    with pytest.raises(ConfigError, match=r"^unknown config key 'sae.widht' in x.yaml: did you mean sae.width\?$"):
        build(StudyConfig, {"sae": {"widht": 3}}, where=" in x.yaml")
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
