"""sae-probes as a probing source: its tasks out of the pinned wheel, declared subsets, and the mean over tasks."""

import csv
import io
import json
import zipfile

import numpy as np
import pytest
import torch

from scaffold_sae import fetch, probing, probing_sources
from scaffold_sae.analyses import probing as probing_analysis



def tiny_saes(lm, ranks, width, k):
    """Batch top-k SAEs on the tiny model's layer-1 residual, thresholds calibrated to L0 = k on some of its rows."""
    from scaffold_sae.sae import HybridSAE, SAEConfig
    from scaffold_sae.trainer import estimate_threshold

    ids = torch.randint(4, 100, (4, 16), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = lm.bos_token_id
    x = lm.residual(ids, 1)[:, 1:].reshape(-1, lm.d_model)
    saes = {}
    for r in ranks:
        sae = HybridSAE(SAEConfig(arch="batchtopk", d_in=lm.d_model, width=width, k=k, rank=r,
                                  encoder_input="residual")).eval()
        with torch.no_grad():
            sae.threshold.fill_(estimate_threshold(sae, x, k))
        saes[f"r{r}"] = sae
    return saes


def raw_rows(task: str) -> list[dict]:
    """The task's CSV rows read independently of the module (zip member -> zstandard -> csv)."""
    import zstandard

    with zipfile.ZipFile(fetch.wheel("sae-probes")) as archive:
        data = archive.read(f"sae_probes/data/cleaned_data/{task}.csv.zst")
    text = zstandard.ZstdDecompressor().decompressobj().decompress(data).decode()
    csv.field_size_limit(1 << 30)
    return list(csv.DictReader(io.StringIO(text)))


def test_the_wheel_holds_155_tasks_of_three_kinds():
    tasks = probing_sources.tasks()
    kinds = {kind: sum(t.kind == kind for t in tasks) for kind in ("binary", "multiclass", "continuous")}
    assert kinds == {"binary": 113, "multiclass": 20, "continuous": 22} and len(tasks) == 155
    sizes = {t.name: t.examples for t in tasks}
    assert sizes["92_glue_sst2"] == len(raw_rows("92_glue_sst2")) == 5000
    assert sizes["95_toxic_is"] == 728 and sizes["41_truthqa_tf"] == 786
    assert [t.number for t in tasks] == sorted(t.number for t in tasks)


def test_the_declared_subset_binary_at_least_1000():
    chosen = probing_sources.subset("binary>=1000")
    assert len(chosen) == 111 and all(t.kind == "binary" and t.examples >= 1000 for t in chosen)
    assert {"95_toxic_is", "41_truthqa_tf"}.isdisjoint(t.name for t in chosen)   # the two binary tasks under 1,000
    assert len(probing_sources.subset("binary")) == 113
    assert len(probing_sources.subset("multiclass")) == 20


def test_expand_replaces_subsets_and_keeps_other_names():
    names = probing_sources.expand(["bbc_topic", "sae_probes:binary>=4000", "sae_probes:92_glue_sst2", "language"])
    big = [f"sae_probes:{t.name}" for t in probing_sources.tasks() if t.kind == "binary" and t.examples >= 4000]
    assert names == ["bbc_topic", *big, "language"]          # 92_glue_sst2 (5,000 rows) is already in the subset
    assert "sae_probes:92_glue_sst2" in big and "sae_probes:161_agnews_0" in big
    with pytest.raises(probing_sources.SourceError, match="selects no task"):
        probing_sources.expand(["sae_probes:binary>=100000"])


def test_a_task_loads_like_a_built_in_dataset():
    data = probing.load_dataset("sae_probes:92_glue_sst2", n_docs=10, seed=0)
    assert data.name == "sae_probes:92_glue_sst2" and data.classes == ["0", "1"]
    assert sorted(data.labels) == [0] * 5 + [1] * 5
    by_target = {}
    for row in raw_rows("92_glue_sst2"):
        by_target.setdefault(row["target"], set()).add(row["prompt"])
    assert all(text in by_target[data.classes[label]] for text, label in zip(data.texts, data.labels))
    assert probing.load_dataset("sae_probes:92_glue_sst2", n_docs=10, seed=0).texts == data.texts   # deterministic
    assert probing.load_dataset("sae_probes:92_glue_sst2", n_docs=10, seed=1).texts != data.texts
    multi = probing.load_dataset("sae_probes:10_nyc_borough", n_docs=25, seed=0)
    assert len(multi.classes) == 5 and sorted(set(multi.labels)) == list(range(5))


def test_names_that_do_not_resolve_are_one_clear_error():
    with pytest.raises(probing_sources.SourceError, match="continuous, not a classification task"):
        probing.load_dataset("sae_probes:2_hist_fig_birthyear")
    with pytest.raises(probing_sources.SourceError, match="unknown sae-probes task 'no_such_task'"):
        probing.load_dataset("sae_probes:no_such_task")
    with pytest.raises(probing_sources.SourceError, match=r"is a subset of tasks.*expand"):
        probing.load_dataset("sae_probes:binary>=1000")
    with pytest.raises(probing.ProbingError, match=r"sae_probes:binary>=1000"):
        probing.load_dataset("mmlu")                         # the unknown-dataset message names the source


def small_wheel(path):
    """A wheel laid out like sae-probes 0.4.2 with two tasks: a binary one of 3 rows, a continuous one of 2."""
    import zstandard

    pack = zstandard.ZstdCompressor().compress
    master = ('"Dataset save name","Data type"\n"cleaned_data/1_a_is.csv","Binary Classification"\n'
              '"cleaned_data/2_b_age.csv","Continuous Data"\n')
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(probing_sources.MASTER, pack(master.encode()))
        archive.writestr(f"{probing_sources.DATA}1_a_is.csv.zst", pack(b'prompt,target\n"x, ""y""\nz",1\nb,0\nc,1\n'))
        archive.writestr(f"{probing_sources.DATA}2_b_age.csv.zst", pack(b"prompt,target\nd,3.5\ne,7\n"))
    return path


def test_the_task_index_is_kept_next_to_the_wheel(tmp_path, monkeypatch):
    monkeypatch.setenv("SCAFFOLD_SAE_HOME", str(tmp_path))
    (tmp_path / "wheels").mkdir()
    wheel = small_wheel(tmp_path / "wheels" / "sae_probes-0.4.2-py3-none-any.whl")
    monkeypatch.setitem(fetch.WHEELS, "sae-probes", fetch.PinnedWheel("sae-probes", "0.4.2", fetch.sha256_file(wheel)))
    expected = [probing_sources.Task("1_a_is", "binary", 3), probing_sources.Task("2_b_age", "continuous", 2)]
    assert probing_sources.tasks() == expected               # a quoted prompt with a newline is one row
    (index,) = (tmp_path / "indexes").iterdir()
    assert index.name == f"sae-probes-0.4.2-{fetch.sha256_file(wheel)[:12]}.json"
    assert json.loads(index.read_text()) == [{"name": "1_a_is", "kind": "binary", "examples": 3},
                                             {"name": "2_b_age", "kind": "continuous", "examples": 2}]
    index.write_text("{not json")                            # damaged: rebuilt, not trusted
    assert probing_sources.tasks() == expected and len(json.loads(index.read_text())) == 2
    data = probing.load_dataset("sae_probes:1_a_is", n_docs=2, seed=0)
    assert data.classes == ["0", "1"] and sorted(data.labels) == [0, 1]
    assert set(data.texts) <= {'x, "y"\nz', "b", "c"}


def _score(dataset, features, rank, k, value, low=None, high=None):
    return {"dataset": dataset, "features": features, "rank": rank, "k": k,
            "accuracy": {"value": value, "low": low, "high": high}, "sd": None, "per_split": [value]}


def _diff(dataset, k, value, low, high):
    return {"dataset": dataset, "sae": "r8", "baseline": "r0", "rank": 8, "k": k,
            "difference": {"value": value, "low": low, "high": high}, "sd": None, "per_split": [], "verdict": ""}


def test_breadth_means_over_tasks_match_a_slow_reference():
    rng = np.random.default_rng(0)
    tasks = [f"sae_probes:{i}_t" for i in range(7)]
    acc0, acc8 = rng.uniform(0.6, 0.9, 7), rng.uniform(0.6, 0.9, 7)
    sparse = ([_score(t, "r0", 0, 5, a) for t, a in zip(tasks, acc0)] + [_score(t, "r8", 8, 5, a)
                                                                         for t, a in zip(tasks, acc8)]
              + [_score("bbc_topic", "r0", 0, 5, 0.1), _score("mean", "r0", 0, 5, 0.2)])   # not tasks of the source
    lows = [-0.01, 0.02, -0.2, 0.01, -0.05, -0.3, 0.0]
    highs = [0.05, 0.08, -0.01, 0.09, 0.04, -0.1, 0.1]
    paired = [_diff(t, 5, b - a, lo, hi) for t, a, b, lo, hi in zip(tasks, acc0, acc8, lows, highs)]
    summary = probing_sources.breadth({"sparse": sparse, "paired": paired}, n_boot=500, seed=3)
    assert summary.tasks == tasks
    mean = {m.features: m for m in summary.means}
    assert mean["r0"].tasks == 7 and mean["r0"].mean == pytest.approx(acc0.mean())
    # slow reference of the interval over tasks: resample tasks with replacement, one draw at a time
    draws = np.random.default_rng(3).integers(0, 7, size=(500, 7))
    boot = [np.mean([acc0[i] for i in draw]) for draw in draws]
    assert (mean["r0"].low, mean["r0"].high) == pytest.approx(tuple(np.percentile(boot, [2.5, 97.5])))
    (diff,) = summary.differences
    assert diff.mean == pytest.approx((acc8 - acc0).mean()) and diff.tasks == 7
    assert (diff.better, diff.worse) == (2, 2)                          # own intervals above / below 0
    assert diff.verdict == ("better" if diff.low > 0 else "worse" if diff.high < 0 else "undecided")
    assert summary.per_task[tasks[2]] == {"r0@5": pytest.approx(acc0[2]), "r8@5": pytest.approx(acc8[2])}
    assert probing_sources.breadth({"sparse": [], "paired": []}).tasks == []


def byte_tokenizer():
    """A byte-level tokenizer (256 byte tokens + specials) that reads any text, for a tiny model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(["<pad>", "<s>", "</s>", *sorted(alphabet)])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def test_sae_probes_tasks_run_through_the_probing_analysis_by_name():
    """Real tasks, named in the config, run through run_probing on a tiny model; breadth reads its result."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from scaffold_sae.models import from_hf_model

    tokenizer = byte_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    lm = from_hf_model(LlamaForCausalLM(config).eval(), tokenizer, spec="tiny-bytes")
    saes = tiny_saes(lm, ranks=(0, 2), width=32, k=3)
    names = probing_sources.expand(["sae_probes:binary>=4000"])[:3]
    cfg = probing_analysis.ProbeConfig(datasets=names, n_docs=24, max_tokens=12, ks=[1, 5], n_splits=2, n_boot=50,
                                       tpp_n=[2], topic_dataset="", sink_factor=0, batch_size=8)
    result = probing_analysis.run_probing(lm, 1, saes, "r0", cfg)
    assert list(result.datasets) == names and all(not d.skipped and d.tasks == 1 for d in result.datasets.values())
    # a source's tasks stay out of the pooled mean over datasets (three tasks would otherwise make one)
    assert not any(s.dataset == probing_analysis.MEAN for s in [*result.sparse, *result.paired])
    summary = probing_sources.breadth(result, n_boot=50)
    assert summary.tasks == names
    assert {(m.features, m.k, m.tasks) for m in summary.means} == {
        (f, k, 3) for f in ("residual", "r0", "r2") for k in (1, 5)}
    for m in summary.means:
        per_task = [s.accuracy.value for s in result.sparse if s.dataset in names and (s.features, s.k) ==
                    (m.features, m.k)]
        assert m.mean == pytest.approx(np.mean(per_task)) and m.low <= m.mean <= m.high
    assert {(d.sae, d.baseline, d.k) for d in summary.differences} == {("r2", "r0", 1), ("r2", "r0", 5)}
    titles = [s.title for s in probing_sources.breadth_sections(summary)]
    assert titles == ["Probing breadth: sae_probes", "Probing breadth: sae_probes, per task"]


def test_source_tasks_get_breadth_sections_not_a_column_each():
    """A probing result with two sae_probes tasks beside a built-in dataset: the report's accuracy table has no column
    per task, and the breadth sections average the tasks (hybrid minus plain: mean of 0.1 and 0.3)."""
    from scaffold_sae.analyses.probing import (DatasetInfo, PairedDifference, ProbeConfig, ProbingResult,
                                               SparseProbeScore, sections)
    from scaffold_sae.stats import Estimate

    def score(dataset, sae, rank, acc):
        return SparseProbeScore(dataset, sae, rank, 5, Estimate(acc, acc - 0.05, acc + 0.05), 0.0, [acc])

    tasks = {"sae_probes:1_a": (0.6, 0.7), "sae_probes:2_b": (0.5, 0.8), "bbc_topic": (0.7, 0.75)}
    sparse = [s for d, (plain, hybrid) in tasks.items() for s in (score(d, "plain", 0, plain),
                                                                  score(d, "hybrid", 8, hybrid))]
    paired = [PairedDifference(d, "hybrid", "plain", 8, 5, Estimate(h - p, h - p - 0.05, h - p + 0.05), 0.0,
                               [Estimate(h - p, h - p - 0.05, h - p + 0.05)], "better") for d, (p, h) in tasks.items()]
    result = ProbingResult({d: DatasetInfo(["0", "1"], 100, 10.0) for d in tasks}, {}, sparse, paired, [], [],
                           ProbeConfig())
    out = sections(result)
    assert out[0].tables[0].columns[-1] == "bbc_topic" and not any("sae_probes" in c for c in out[0].tables[0].columns)
    breadth = next(s for s in out if s.title == "Probing breadth: sae_probes")
    diff = breadth.tables[1].rows[0]
    assert diff[:4] == ["hybrid", "plain", 5, 2] and diff[4].startswith("0.2 [")


def test_breadth_markdown_reads_an_experiment_summary(tmp_path):
    """`python -m scaffold_sae.probing_sources SUMMARY 5`: the breadth sections of every probing run in a summary."""
    tasks = [f"sae_probes:{i}_t" for i in range(3)]
    sparse = [_score(t, f, r, k, 0.6 + 0.1 * r / 8) for t in tasks for f, r in (("r0", 0), ("r8", 8)) for k in (1, 5)]
    paired = [_diff(t, k, 0.1, 0.05, 0.15) for t in tasks for k in (1, 5)]
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"runs": {"seed0/table.json": {"analyses": {"probing": {"sparse": sparse,
                                                                                      "paired": paired}}}}}))
    text = probing_sources.breadth_markdown(str(path), [5])
    assert "## Probing breadth: sae_probes\n" in text and "Plots are in" not in text
    assert "| r8 | r0 | 5 | 3 | 0.1 [0.1, 0.1] | 3 | 0 | better |" in text
    assert "| sae_probes:1_t | 0.6 | 0.7 |" in text and "@1" not in text
