"""The table across models in RESULTS.md: each declared reading drawn by the claims engine from the summaries."""

from __future__ import annotations

import json

import pytest

from scaffold_sae import across_models
from scaffold_sae.config import ConfigError
from scaffold_sae.experiments import all_experiments, results_markdown

from test_claims import known_study


def write(tmp_path, declaration: str):
    (tmp_path / "experiments").mkdir()
    for slug in ("gemma-study", "smol-study", "big-study"):
        (tmp_path / "experiments" / f"{slug}.yaml").write_text(f"slug: {slug}\nquestion: q\nlegacy: run.sh\n")
    for slug, dense in (("gemma-study", (50, 52, 54)), ("smol-study", (10, 12, 14))):
        study = known_study()
        for i, count in enumerate(dense):
            study["saes"][f"baseline{i}"]["dense_10"] = count
        (tmp_path / "results" / slug).mkdir(parents=True)
        (tmp_path / "results" / slug / "summary.json").write_text(json.dumps({"runs": {"results.json": study}}))
    (tmp_path / "results" / across_models.DECLARATION).write_text(declaration)
    return tmp_path / "results", all_experiments(tmp_path / "experiments")


DECLARED = """models: [Gemma, Smol, Big]
massive: [gemma-study, smol-study, big-study]
rows:
- claim: dense
  label: dense latents
  readings: [gemma-study, smol-study, big-study]
- claim: causal
  label: causal ratio
  readings: [gemma-study, '', big-study]
"""


def test_the_table_draws_each_declared_reading_through_the_claims_engine(tmp_path):
    results, experiments = write(tmp_path, DECLARED)
    lines = results_markdown(results, experiments).splitlines()
    at = lines.index("## Across models")
    table = [line for line in lines[at:] if line.startswith("| ")]
    assert table[0] == "| | Gemma | Smol | Big |"
    assert table[1] == "| massive-dimension ratio | 80x | 80x | not run |"      # 40 / 0.5 in known_study
    gemma = across_models.claim_row("gemma-study", "dense", results, experiments)
    assert table[2] == (f"| dense latents | {across_models.cell(gemma)} | "
                        f"{across_models.cell(across_models.claim_row('smol-study', 'dense', results, experiments))} "
                        "| not run |")
    assert gemma.verdict == "reproduced" and across_models.cell(gemma).endswith("n=384: reproduced")
    assert table[3].startswith("| causal ratio | 1.9 [1.5, 2.3], n=40: ") and table[3].endswith(" | - | not run |")
    assert "1 of 3 models measured" not in "\n".join(lines) and "2 of 3 models measured" in "\n".join(lines)


def test_a_declaration_that_does_not_fit_fails_with_one_line(tmp_path):
    results, experiments = write(tmp_path, DECLARED.replace("[gemma-study, '', big-study]", "[gemma-study]"))
    with pytest.raises(ConfigError, match=r"row 1 \(causal ratio\) gives 1 readings for 3 models: give one per "
                                          "model, empty where there is none"):
        across_models.load_declaration(results / across_models.DECLARATION)
    (results / across_models.DECLARATION).write_text(DECLARED.replace("[gemma-study, smol-study, big-study]\n-",
                                                                      "[gemma-study, smol-study @ seed9, x]\n-"))
    declared = across_models.load_declaration(results / across_models.DECLARATION)
    with pytest.raises(ConfigError, match="'smol-study @ seed9': results/smol-study/summary.json has no run or "
                                          "series 'seed9'"):
        across_models.markdown(results, experiments, declared)
    assert across_models.load_declaration(tmp_path / "none.yaml") is None
