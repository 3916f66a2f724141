"""The study end to end: harvest -> lockstep training -> matched-L0 evaluation -> report, and its reuse."""

import json
import subprocess
import sys

import pytest

from scaffold_sae.study import StudyConfig, run_study, threshold_section
from scaffold_sae.report import write_report


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_lm):
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_lm.hf_model.save_pretrained(path)
    tiny_lm.tokenizer.save_pretrained(path)
    return path


def tiny_study(model_dir, corpus) -> StudyConfig:
    return StudyConfig(model=str(model_dir), layer=1, corpus=str(corpus), ctx_len=32, train_tokens=4096,
                       eval_tokens=1024, ce_tokens=256, width=64, k=4, ranks=[0, 2, 4], steps_tokens=40 * 256,
                       batch_size=256, harvest_batch_size=8)


def test_study_end_to_end_and_rerun_reuses_everything(tmp_path, tiny_model_dir, tiny_corpus):
    cfg = tiny_study(tiny_model_dir, tiny_corpus)
    study = run_study(cfg, tmp_path, progress=False)
    assert sorted(ev["rank"] for ev in study["saes"].values()) == [0, 2, 4]
    for ev in study["saes"].values():
        assert ev["inference"] == "batchtopk" and ev["l0"] == pytest.approx(4.0, rel=0.02)
        assert 0 <= ev["fvu"] < 1.5 and ev["n_predictions"] == 8 * 30
    paths = write_report(study, tmp_path / "report", sections=[threshold_section(study)])
    saved = json.loads(paths.json.read_text())
    assert saved["config"]["ranks"] == [0, 2, 4] and "Inference threshold" in paths.markdown.read_text()

    saes_mtime = {p: p.stat().st_mtime for p in (tmp_path / "saes").rglob("*.safetensors")}
    again = run_study(cfg, tmp_path, progress=False)
    assert again["saes"] == study["saes"]
    assert {p: p.stat().st_mtime for p in (tmp_path / "saes").rglob("*.safetensors")} == saes_mtime
    assert again["timings"]["train_s"] < 5


def test_study_cli_rejects_bad_ranks(tmp_path):
    result = subprocess.run([sys.executable, "-m", "scaffold_sae", "study", "--ranks", "4,8", "--out", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "include 0" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_reduced_demo_on_the_embedded_model(tmp_path):
    """The demo's pipeline on real Gemma-3-270M, reduced in size so it runs in CI."""
    result = subprocess.run(
        [sys.executable, "-m", "scaffold_sae", "demo", "--out", str(tmp_path), "--no-progress",
         "--train-tokens", "8192", "--eval-tokens", "1024", "--ce-tokens", "256", "--width", "512", "--k", "16",
         "--ranks", "0,8", "--steps-tokens", str(30 * 1024), "--batch-size", "1024"],
        capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "report:" in result.stdout
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert results["config"]["model"] == "gemma3-270m" and results["config"]["layer"] == 9
    html = (tmp_path / "report" / "report.html").read_text()
    assert "<img" in html and "http://" not in html and "https://" not in html


def test_study_config_values_are_typed_like_flags(tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text("width: abc\n")
    result = subprocess.run([sys.executable, "-m", "scaffold_sae", "study", "--config", str(config),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip() == "error: width='abc' is invalid: expected int"
    result = subprocess.run([sys.executable, "-m", "scaffold_sae", "study", "--scaffold-tied", "maybe",
                             "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2 and "scaffold_tied='maybe' is invalid: expected bool" in result.stderr
