"""The report holds every section and every number of its JSON, opens offline, and regenerates from the JSON."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from scaffold_sae import report, study_report
from scaffold_sae.report import Figure, Section, Series, Table, format_number


def fake_eval(rank: int, dense_10: int, fvu: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    density = np.concatenate([np.zeros(3), 10 ** rng.uniform(-5, -0.3, 61)])
    counts, edges = np.histogram(np.log10(density[density > 0]), bins=np.linspace(-7, 0, 15))
    return {
        "model": "tiny", "layer": 1, "arch": "batchtopk", "rank": rank, "width": 64, "inference": "batchtopk",
        "n_contexts": 8, "ctx_len": 32, "n_tokens": 248, "n_predictions": 240, "l0": 32.0 + rank / 7,
        "fvu": fvu, "explained_variance": 1 - fvu, "fvu_sparse": fvu * 1.7, "mse": 0.0123 * (1 + rank),
        "cosine": 0.91234 - rank / 1000, "dead": 3, "dead_share": 3 / 64, "dense_10": dense_10,
        "dense_10_share": dense_10 / 64, "dense_1": 20 + rank, "dense_1_share": (20 + rank) / 64,
        "max_density": 0.38 - rank / 100, "ce_clean": 3.21, "ce_sae": 3.4 + rank / 100, "ce_zero": 9.87,
        "ce_mean": 7.65, "ce_score_zero": 0.9712 - rank / 1000, "ce_score_mean": 0.95 - rank / 500,
        "kl_sae": 0.211, "kl_zero": 6.5, "kl_mean": 4.4, "kl_score_zero": 0.9675, "kl_score_mean": 0.952,
        "bos_policy": "position 0 excluded", "density_hist_counts": counts.tolist(),
        "density_hist_edges": edges.tolist(), "density": density.tolist(),
    }


@pytest.fixture()
def study() -> dict:
    return {
        "title": "test study",
        "config": {"model": "tiny", "layer": 1, "train": {"lr": 0.00021, "steps": 150, "k": 32},
                   "ranks": [0, 8, 24], "source": "see https://example.org/paper for the method"},
        "saes": {"r0": fake_eval(0, 69, 0.3631, 0), "r8": fake_eval(8, 2, 0.2664, 1),
                 "r24": fake_eval(24, 0, 0.2461, 2)},
    }


def extra_section() -> Section:
    return Section(
        "Causality", "CE with the scaffold removed versus PCA and random directions.",
        tables=[Table(["removed", "CE", "ratio to clean"], [["scaffold", 24.07, 7.498], ["pca", 8.99, 2.8011]])],
        figures=[Figure("CE ratio vs r", [Series("scaffold", [2, 8, 24], [1.5, 3.25, 7.498])], xlabel="r"),
                 Figure("A ready image", kind="png", png_base64=base64.b64encode(report.render_png(
                     Figure("tiny", [Series("s", [0, 1], [1, 0])]))).decode())])


def numbers(value, key=None):
    """Every number in a JSON value, skipping the exempt per-latent arrays."""
    if key in report.EXEMPT_KEYS:
        return
    if isinstance(value, dict):
        for k, v in value.items():
            yield from numbers(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from numbers(v, key)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def strings(value, key=None):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from strings(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v, key)
    elif isinstance(value, str) and key != "png_base64":
        yield value


EXTERNAL = re.compile(r"""(?:src|href|action|poster|data)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?\s*(?:https?:)?//|@import""",
                      re.IGNORECASE)


def test_report_has_every_section_and_number(tmp_path, study):
    paths = study_report.write_report(study, tmp_path, sections=[extra_section()])
    results = json.loads(paths.json.read_text())
    md, page = paths.markdown.read_text(), paths.html.read_text()
    found = list(numbers(results))
    assert len(found) > 150                                  # config, every CoreEval scalar, histograms, extra
    for value in found:
        text = format_number(value)
        assert text in md, f"{value} ({text}) missing from report.md"
        assert text in page, f"{value} ({text}) missing from report.html"
    for title in ("Configuration", "Rank sweep", "Latent density", "Every core number", "Causality"):
        assert f"## {title}" in md
        assert f"<h2>{title}</h2>" in page
    for figure in ("Dense latents vs scaffold rank", "FVU vs scaffold rank", "CE loss score vs scaffold rank",
                   "Per-latent firing density, baseline vs hybrid", "CE ratio vs r", "A ready image"):
        assert f'alt="{figure}"' in page
    assert page.count("data:image/png;base64,") == 6
    assert results["sections"][0]["title"] == "Causality"     # stored so the JSON regenerates it
    assert results["saes"]["r8"]["density"] == study["saes"]["r8"]["density"]


def test_html_is_self_contained(tmp_path, study):
    page = study_report.write_report(study, tmp_path, sections=[extra_section()]).html.read_text()
    assert not EXTERNAL.search(page)
    assert "<link" not in page and "<script" not in page
    assert "https://example.org" in page                      # text may mention a URL; it is not a resource
    for image in re.findall(r'src="data:image/png;base64,([^"]+)"', page):
        assert base64.b64decode(image)[:8] == b"\x89PNG\r\n\x1a\n"


def test_regenerate_from_json_is_identical(tmp_path, study):
    first = study_report.write_report(study, tmp_path / "a", sections=[extra_section()])
    second = study_report.write_report(study_report.load_results(first.json), tmp_path / "b")
    assert second.json.read_text() == first.json.read_text()
    assert second.markdown.read_text() == first.markdown.read_text()
    assert second.html.read_text() == first.html.read_text()


def test_nan_is_stored_as_null_and_shown_as_na(tmp_path, study):
    study["saes"]["r0"]["ce_score_zero"] = float("nan")
    paths = study_report.write_report(study, tmp_path)
    assert json.loads(paths.json.read_text())["saes"]["r0"]["ce_score_zero"] is None
    assert "n/a" in paths.markdown.read_text()


def test_section_text_is_escaped(tmp_path, study):
    page = study_report.write_report(study, tmp_path, [Section("<b>x</b>", "a < b & c")]).html.read_text()
    assert "<h2>&lt;b&gt;x&lt;/b&gt;</h2>" in page and "a &lt; b &amp; c" in page


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(report.ReportError, match="does not exist"):
        study_report.load_results(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(report.ReportError, match="not valid JSON"):
        study_report.load_results(tmp_path / "bad.json")
    with pytest.raises(report.ReportError, match="cannot store object"):
        study_report.write_report({"config": {"x": object()}, "saes": {}}, tmp_path)


def test_format_number():
    assert format_number(3) == "3" and format_number(0.363149) == "0.3631" and format_number(1234567.0) == "1.235e+06"
    assert format_number(float("nan")) == "n/a" and format_number(None) == "n/a" and format_number(True) == "True"


def test_summary_table_sorted_by_rank(study):
    table = report.format_summary_table({"hybrid": study["saes"]["r8"], "baseline": study["saes"]["r0"]})
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["sae", "rank", "L0"]
    assert lines[2].startswith("baseline") and lines[3].startswith("hybrid")
    assert "0.3631" in lines[2] and " 69 " in lines[2] and " 28 " in lines[3]


def test_report_cli_regenerates(tmp_path, study):
    paths = study_report.write_report(study, tmp_path / "a")
    result = subprocess.run([sys.executable, "-m", "scaffold_sae", "report", "--results", str(paths.json),
                             "--out", str(tmp_path / "b")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "b" / "report.html").read_text() == paths.html.read_text()
    missing = subprocess.run([sys.executable, "-m", "scaffold_sae", "report", "--results", str(tmp_path / "no.json"),
                              "--out", str(tmp_path / "c")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_a_report_redrawn_elsewhere_keeps_its_relative_links(tmp_path, study):
    """`scaffold-sae report --out` another folder: the stored links (the study's browser sites) still reach their
    files; redrawn in place they are unchanged; absolute URLs and anchors are left alone."""
    from urllib.parse import unquote

    site = tmp_path / "run" / "browse" / "sae one" / "index.html"
    site.parent.mkdir(parents=True)
    site.write_text("<html></html>")
    links = [["site", "../browse/sae one/index.html"], ["paper", "https://example.org/p"], ["top", "#summary"]]
    first = study_report.write_report(study, tmp_path / "run" / "report", sections=[Section("Feature browser", links=links)])
    for out in (tmp_path / "elsewhere" / "deeper", first.json.parent):
        paths = study_report.report_from_results(study_report.ReportConfig(results=str(first.json), out=str(out)))
        (href,) = re.findall(r"\[site\]\(([^)]+)\)", paths.markdown.read_text())
        stored = json.loads(paths.json.read_text())["sections"][0]["links"]
        assert (out / unquote(href)).resolve() == site.resolve() and stored[1:] == links[1:]
    assert stored == links  # redrawn in place: unchanged


def test_seeds_give_mean_and_sd_and_the_dense_claim_names_each_baseline(tmp_path):
    """Two seeds of a plain SAE, a hybrid and a capacity-matched SAE: the tables show mean ± sd (sample sd) and
    the hybrid's dense count against each baseline, paired by seed; a study without roles reads rank 0 as the
    baseline."""
    from scaffold_sae import roles

    def member(kind, seed, rank, for_rank, dense):
        return {**fake_eval(rank, dense, 0.2 + seed / 100, seed), "kind": kind, "seed": seed, "for_rank": for_rank}

    saes = {"b0": member("baseline", 0, 0, 0, 50), "b1": member("baseline", 1, 0, 0, 54),
            "h0": member("hybrid", 0, 8, 8, 2), "h1": member("hybrid", 1, 8, 8, 4),
            "c0": member("capacity_matched", 0, 0, 8, 3), "c1": member("capacity_matched", 1, 0, 8, 1)}
    assert roles.mean_sd([50, 54]) == (52.0, pytest.approx(2 * 2 ** 0.5)) and roles.mean_sd([3]) == (3.0, None)
    by_against = {c.against: c for c in roles.dense_comparisons(saes)}
    assert set(by_against) == {"baseline", "capacity_matched"}
    base = by_against["baseline"]
    assert (base.hybrid_mean, base.against_mean, base.diff_mean, base.seeds) == (3.0, 52.0, -49.0, 2)
    assert base.diff_sd == pytest.approx(2 ** 0.5) and base.fewer_every_seed and base.change == pytest.approx(-49 / 52)
    capacity = by_against["capacity_matched"]
    assert capacity.diff_mean == 1.0 and not capacity.fewer_every_seed
    md = study_report.write_report({"title": "seeds", "config": {}, "saes": saes}, tmp_path).markdown.read_text()
    assert "| hybrid r=8 | baseline | 2 | 3 ± 1.414 | 52 ± 2.828 | -49 ± 1.414 | -94% | fewer in every seed |" in md
    assert "| hybrid r=8 | capacity_matched | 2 | 3 ± 1.414 | 2 ± 1.414 | 1 ± 2.828 | +50% | not fewer |" in md
    assert "## Over seeds" in md and "| capacity_matched r=8 | batchtopk | batchtopk | 2 |" in md
    assert "Mean ± sd over 2 seeds." in md and "With one seed" not in md

    legacy = {"r0": fake_eval(0, 69, 0.36, 0), "r8": fake_eval(8, 2, 0.27, 1)}
    (only,) = roles.dense_comparisons(legacy)
    assert (only.against, only.hybrid_mean, only.against_mean, only.seeds) == ("baseline", 2.0, 69.0, 1)
    assert not roles.sections(legacy)[1:]                                   # one seed: no 'Over seeds' section
    assert "With one seed there is no sd" in roles.sections(legacy)[0].text


def test_training_curves_and_how_each_run_ended(tmp_path, study):
    """study['training'] gives a 'Training' section before the configuration: loss and held-out FVU against tokens
    per SAE (each with its data table) and a line per SAE saying whether it converged or ran to the budget."""
    study["training"] = {
        "r0": {"steps": 40, "max_steps": 100, "tokens": 10240, "stop_reason": "converged", "converged_step": 35,
               "heldout_fvu": 0.2135, "curve": {"tokens": [5120, 10240], "loss": [0.8123, 0.5071]},
               "heldout": {"tokens": [5120, 10240], "fvu": [0.3318, 0.2135]}},
        "r8": {"steps": 100, "max_steps": 100, "tokens": 25600, "stop_reason": "budget", "converged_step": None,
               "heldout_fvu": 0.1517, "curve": {"tokens": [5120, 25600], "loss": [0.7012, 0.3344]},
               "heldout": {"tokens": [5120, 25600], "fvu": [0.2911, 0.1517]}}}
    paths = study_report.write_report(study, tmp_path)
    md, page = paths.markdown.read_text(), paths.html.read_text()
    titles = [line[3:] for line in md.splitlines() if line.startswith("## ")]
    assert titles[-2:] == ["Training", "Configuration"]
    assert "| r0 | converged: stopped at step 40 of 100; the rule held from step 35 | 40 | 100 | 10240 | 0.2135 |" in md
    assert "| r8 | stopped at the budget (100 steps) | 100 | 100 | 25600 | 0.1517 |" in md
    assert 'alt="Training loss vs tokens"' in page and 'alt="Held-out FVU vs tokens"' in page
    for value in numbers(json.loads(paths.json.read_text())["training"]):
        assert format_number(value) in md and format_number(value) in page


def test_no_import_cycle_runs_through_report():
    """report.py is a building block: it imports nothing from scaffold_sae (at module level or inside a function), so
    no module that imports it can be reached back from it."""
    import ast
    from pathlib import Path

    source = Path(report.__file__).read_text()
    imported = [node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom) and node.module]
    imported += [alias.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Import)
                 for alias in node.names]
    assert not [m for m in imported if m.startswith("scaffold_sae") or m.startswith(".")]
    assert not [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom) and node.level]
