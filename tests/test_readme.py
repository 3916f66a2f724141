"""The README's Python snippet runs as written (on the tiny model instead of Gemma-3) and prints its table; the
README stays a front page of at most 200 lines whose links resolve."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SETTINGS = 'model, layer, corpus, tokens = "gemma3-270m", 9, "news", 200_000'


def snippet() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert len(blocks) == 1, "the README has one Python snippet"
    return blocks[0]


def test_the_readme_snippet_trains_evaluates_and_prints_a_table(tmp_path, monkeypatch, capsys, tiny_lm, tiny_corpus):
    code = snippet()
    assert SETTINGS in code, "the test swaps this settings line for the tiny model's"
    model_dir = tmp_path / "tiny-model"
    tiny_lm.hf_model.save_pretrained(model_dir)
    tiny_lm.tokenizer.save_pretrained(model_dir)
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace(SETTINGS, f"model, layer, corpus, tokens = {str(model_dir)!r}, 1, {str(tiny_corpus)!r}, "
                                        "4096"), "README.md", "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [line for line in lines if "batchtopk_m2048_k32_r" in line]
    assert len(rows) == 2 and "r0" in rows[0] and "r8" in rows[1]


def test_every_import_of_the_snippet_is_used():
    code = snippet()
    for names in re.findall(r"^from \S+ import (.+)$", code, flags=re.M):
        for name in (n.strip() for n in names.split(",")):
            assert len(re.findall(rf"\b{name}\b", code)) > 1, f"{name} is imported and never used"


def test_the_readme_is_a_front_page_whose_links_resolve():
    assert len(README.splitlines()) <= 200
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
