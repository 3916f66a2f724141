"""A new user's mistakes, across every command: each one ends with one `error: ...` line naming the problem and the
fix, exit status 2, and no file or folder created or changed (the CLI runs in-process on a tiny random Llama)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from helpers import make_hf_model, make_texts, make_tokenizer
from scaffold_sae.cli import main

LOCK = ".scaffold-sae.lock"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder holding what a user has after the quick start, on tiny models: a model (d 64) and one of another
    width (d 32), a corpus, a cache of layer 1, a plain and a rank-2 SAE, results JSONs, and files that are not text."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from scaffold_sae.cache import harvest
    from scaffold_sae.models import load_model
    from scaffold_sae.sae import SAEConfig
    from scaffold_sae.trainer import TrainConfig, train_saes

    root = tmp_path_factory.mktemp("mistakes")
    tokenizer = make_tokenizer()
    make_hf_model().save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    torch.manual_seed(1)
    narrow = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, bos_token_id=2, eos_token_id=3,
                                          pad_token_id=1))
    narrow.save_pretrained(root / "model32")
    tokenizer.save_pretrained(root / "model32")
    make_hf_model().save_pretrained(root / "no_tokenizer_model")  # weights and config, no tokenizer
    shutil.copytree(root / "model", root / "bad_config_model")
    (root / "bad_config_model" / "config.json").write_text("{\n")
    (root / "docs.txt").write_text("\n\n".join(make_texts(120)) + "\n")
    (root / "random.txt").write_bytes(bytes(torch.randint(0, 256, (20000,), generator=torch.Generator().manual_seed(0),
                                                          dtype=torch.uint8).tolist()))
    (root / "controls.txt").write_text("".join(chr(c % 32) + "ab" for c in range(3000)))  # valid UTF-8, a third controls
    (root / "broken.jsonl").write_text('{"text": "fine"}\n{"text": "cut\n')
    (root / "afile").write_text("not a directory\n")
    (root / "notes.json").write_text(json.dumps({"model": "x"}) + "\n")
    lm = load_model(str(root / "model"))
    cache = harvest(lm, 1, str(root / "docs.txt"), 1024, root / "cache", ctx_len=32, progress=False)
    train = TrainConfig(tokens=512, batch_size=256, progress=False, checkpoint_every=0, init_sample_tokens=512,
                        threshold_sample_tokens=512, dead_tokens=256)
    train_saes(cache, [SAEConfig(arch="batchtopk", width=32, k=4, rank=r) for r in (0, 2)], train, root / "saes")
    shutil.copytree(root / "cache", root / "bad_cache")
    shard = sorted((root / "bad_cache").glob("shard_*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    return root


def snapshot(root: Path) -> dict:
    """Every path under root with its content hash (lock files: only that they exist; a lock is rewritten by every
    command that takes it)."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_dir():
            state[rel] = "dir"
        elif path.name == LOCK:
            state[rel] = "lock"
        else:
            state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


PROGRESS = re.compile(r"\d+%\|")
"""A progress bar's line (the model loader's, before a model-dependent check)."""


def fails(argv: list[str], work: Path, capsys) -> str:
    """Run the CLI; assert exit 2, one error line (besides progress bars) and an unchanged folder; return the line."""
    capsys.readouterr()
    before = snapshot(work)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    lines = [line for line in re.split(r"[\r\n]+", err) if line.strip() and not PROGRESS.search(line)]
    assert exit_info.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert snapshot(work) == before
    return lines[0]


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch, work):
    """The hub answers nowhere (a closed local port): an unknown model name must fail fast, without retries. Run
    from inside the work folder, so that default output paths land where the snapshot sees them."""
    from huggingface_hub import constants

    from scaffold_sae import models

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(models, "_hub_probe", {})
    for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(work)


MODEL, MODEL32, SAE, HYBRID, CACHE = "model", "model32", "saes/batchtopk_m32_k4_r0_resin", "saes/batchtopk_m32_k4_r2_resin", "cache"
HARVEST = ["harvest", "--model", MODEL, "--layer", "1", "--corpus", "docs.txt", "--out", "new_cache", "--ctx-len", "32",
           "--tokens", "256"]

def harvest_model(spec: str) -> list[str]:
    """`harvest` of the corpus with --model ``spec`` (which fails before anything is written)."""
    return ["harvest", "--model", spec, "--layer", "1", "--out", "c", "--corpus", "docs.txt"]


MISTAKES = {
    # harvest
    "harvest-negative-tokens-before-model-load": (
        ["harvest", "--model", "nobody/no-such-model", "--layer", "1", "--out", "c", "--tokens", "-5"],
        r"--tokens -5 is invalid: use at least 1"),
    "harvest-random-bytes-corpus": (HARVEST + ["--corpus", "random.txt"],
                                    r"random\.txt is not UTF-8 text: invalid byte 0x[0-9a-f]{2} at byte offset \d+;"),
    "harvest-control-characters-corpus": (HARVEST + ["--corpus", "controls.txt"],
                                          r"controls\.txt does not look like text: \d+% of its first \d+ characters"),
    "harvest-missing-corpus": (HARVEST + ["--corpus", "missing.txt"], r"no corpus 'missing\.txt': use 'news'"),
    "harvest-broken-jsonl": (HARVEST + ["--corpus", "broken.jsonl"], r"broken\.jsonl:2 is not valid JSON"),
    "harvest-unknown-model-hub-unreachable": (harvest_model("nobody/no-such-model"),
        r"cannot load model 'nobody/no-such-model': the Hugging Face hub \(http://127\.0\.0\.1:9\) is unreachable"),
    "harvest-missing-model-directory": (harvest_model("./no/such/model"),
        r"cannot load model '\./no/such/model': no such directory or file"),
    "harvest-model-directory-without-tokenizer": (harvest_model("no_tokenizer_model"),
        r"cannot load model 'no_tokenizer_model': the directory lacks a tokenizer \(tokenizer\.json"),
    "harvest-model-directory-empty": (harvest_model("saes"),
        r"cannot load model 'saes': the directory lacks config\.json, weights"),
    "harvest-model-directory-bad-config": (harvest_model("bad_config_model"),
        r"cannot load model 'bad_config_model': .*not a valid JSON file"),
    "harvest-model-is-a-text-file": (harvest_model("docs.txt"),
        r"cannot load model 'docs\.txt': a file that is not a \.gguf"),
    "harvest-bad-dtype": (HARVEST + ["--dtype", "bfloat8"], r"dtype='bfloat8' is invalid: allowed values are"),
    "harvest-bad-split": (HARVEST + ["--split", "test"], r"split='test' is invalid: allowed values are train, heldout"),
    "harvest-ctx-len-1": (HARVEST + ["--ctx-len", "1"], r"--ctx-len 1 is invalid: use at least 2"),
    "harvest-out-is-a-file": (HARVEST + ["--out", "afile"], r"afile is a file, not a directory; use another --out"),
    "harvest-layer-out-of-range": (HARVEST + ["--layer", "5"], r"layer 5 is out of range for model: valid layers "
                                                               r"are 0\.\.1"),
    "harvest-other-settings-into-a-cache": (HARVEST + ["--out", CACHE, "--ctx-len", "64"],
                                            r"cache holds a cache of .*use another --out or pass --overwrite"),
    # train
    "train-missing-cache": (["train", "--cache", "no_cache", "--out", "t"], r"no_cache is not an activation cache"),
    "train-model-as-cache": (["train", "--cache", MODEL, "--out", "t"], r"model is not an activation cache"),
    "train-unknown-arch": (["train", "--cache", CACHE, "--out", "t", "--arch", "foo"], r"arch='foo' is invalid"),
    "train-k-above-width": (["train", "--cache", CACHE, "--out", "t", "--width", "8", "--k", "16"],
                            r"k=16 is invalid: k must be in 1\.\.width \(8\)"),
    "train-bad-encoder-input": (["train", "--cache", CACHE, "--out", "t", "--encoder-input", "y"],
                                r"encoder_input='y' is invalid: allowed values are x, residual"),
    "train-bad-ranks": (["train", "--cache", CACHE, "--out", "t", "--ranks", "0,x"], r"ranks='0,x' is invalid"),
    "train-bad-device": (["train", "--cache", CACHE, "--out", "t", "--device", "tpu"], r"device='tpu' is invalid"),
    "train-batch-above-cache": (["train", "--cache", CACHE, "--out", "t", "--batch-size", "99999"], r"cache cache has 1024 rows, fewer than one step of 99999 x 1"),
    "train-out-is-a-file": (["train", "--cache", CACHE, "--out", "afile"], r"--out afile is a file: pass a folder"),
    # eval
    "eval-missing-sae": (["eval", "--sae", "no_sae"], r"SAE path no_sae does not exist"),
    "eval-model-dir-as-sae": (["eval", "--sae", MODEL], r"model is not an SAE directory"),
    "eval-bad-inference": (["eval", "--sae", SAE, "--inference", "foo"], r"inference='foo' is invalid"),
    "eval-zero-tokens": (["eval", "--sae", SAE, "--tokens", "0"], r"tokens=0 is invalid: --tokens must be at least 1"),
    "eval-out-is-a-directory": (["eval", "--sae", SAE, "--out", "saes"], r"--out saes is a directory"),
    "eval-layer-out-of-range": (["eval", "--sae", SAE, "--layer", "7"], r"layer 7 is out of range"),
    "eval-wrong-model-width": (["eval", "--sae", SAE, "--model", MODEL32, "--corpus", "docs.txt"],
                               r"has input size 64 but model32 has d_model 32: pass the --model and --layer"),
    "eval-binary-corpus": (["eval", "--sae", SAE, "--corpus", "random.txt"], r"random\.txt is not UTF-8 text"),
    # browse
    "browse-zero-top-n": (["browse", "--sae", SAE, "--top-n", "0"], r"top_n=0 is invalid"),
    "browse-missing-baseline": (["browse", "--sae", HYBRID, "--baseline", "none_here"],
                                r"baseline SAE none_here does not exist"),
    "browse-out-is-a-file": (["browse", "--sae", SAE, "--out", "afile"], r"--out afile is a file"),
    "browse-wrong-model-width": (["browse", "--sae", SAE, "--model", MODEL32, "--corpus", "docs.txt"],
                                 r"has input size 64 but model32 has d_model 32"),
    # diagnose
    "diagnose-wrong-model-width": (["diagnose", "--sae", SAE, "--model", MODEL32, "--corpus", "docs.txt"],
                                   r"has input size 64 but model32 has d_model 32: pass the --model and --layer"),
    "diagnose-bad-fit": (["diagnose", "--sae", SAE, "--fit", "foo"], r"fit='foo' is invalid"),
    "diagnose-finetune-of-a-hybrid": (["diagnose", "--sae", HYBRID], r"fit=finetune needs a plain SAE"),
    "diagnose-rank-0": (["diagnose", "--sae", SAE, "--rank", "0"], r"rank=0 is invalid"),
    "diagnose-negative-train-tokens": (["diagnose", "--sae", SAE, "--train-tokens", "-3"],
                                       r"train_tokens=-3 is invalid"),
    # study
    "study-missing-config": (["study", "--config", "nothere.yaml"], r"cannot read config file nothere\.yaml"),
    "study-k-above-width": (["study", "--sae.width", "16", "--sae.k", "32", "--out", "s"],
                            r"sae\.k=32 is invalid: k must be in 1\.\.sae\.width \(16\)"),
    # report and compare
    "report-missing-results": (["report", "--results", "nothere.json", "--out", "r"],
                               r"results file nothere\.json does not exist"),
    "report-results-not-json": (["report", "--results", "docs.txt", "--out", "r"], r"docs\.txt is not valid JSON"),
    "report-results-not-a-study": (["report", "--results", "notes.json", "--out", "r"],
                                   r"notes\.json is not a study's results\.json"),
    "compare-missing-results": (["compare", "--results", "nothere.json", "notes.json", "--out", "r"],
                                r"results file nothere\.json does not exist"),
    "compare-results-not-a-study": (["compare", "--results", "notes.json", "--out", "r"],
                                    r"notes\.json is not a study's results\.json"),
    # cache-info
    "cache-info-missing": (["cache-info", "no_cache"], r"no_cache is not an activation cache"),
    "cache-info-bad-verify": (["cache-info", CACHE, "--verify", "sometimes"], r"unknown verify mode 'sometimes'"),
    "cache-info-corrupted-shard": (["cache-info", "bad_cache"], r"shard shard_\d+\.safetensors of bad_cache is "
                                                                r"(corrupted|truncated)"),
}


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_mistake_fails_with_one_line_and_leaves_nothing(name, work, capsys):
    argv, pattern = MISTAKES[name]
    line = fails(argv, work, capsys)
    assert re.search(pattern, line), line


def test_the_sweep_covers_every_command():
    commands = {argv[0] for argv, _ in MISTAKES.values()}
    assert commands == {"harvest", "train", "eval", "browse", "diagnose", "study", "report", "compare", "cache-info"}
    assert len(MISTAKES) >= 25
