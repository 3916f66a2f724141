"""`scaffold-sae diagnose`: antipodal pairs against a loop, counts against evals, the report files, the CLI, and the
fit (the SAE fine-tuned without and with a scaffold, or a fresh pair)."""

from __future__ import annotations

import json

import pytest
import torch

from scaffold_sae.diagnose import DiagnoseConfig, antipodal_pairs, diagnose, fit_arch


@pytest.fixture(scope="module")
def tiny_saved_sae(tiny_lm, tiny_corpus, tmp_path_factory):
    """A plain batchtopk SAE (width 32, k 4) trained briefly on layer 1 of the tiny Llama, saved in our
    SAELens-compatible layout."""
    from scaffold_sae.corpus import load_corpus, pack_contexts
    from scaffold_sae.lm_passes import heldout_activations
    from scaffold_sae.sae import SAEConfig
    from scaffold_sae.trainer import TensorSource, TrainConfig, train_saes

    contexts = pack_contexts(tiny_lm.tokenizer, load_corpus(str(tiny_corpus)), ctx_len=32, n_tokens=32 * 60,
                             bos_id=tiny_lm.bos_token_id)
    x = heldout_activations(tiny_lm, 1, contexts, 10**6)
    train = TrainConfig(tokens=256 * 8, batch_size=256, progress=False, checkpoint_every=0, log_every=4,
                        init_sample_tokens=1024, threshold_sample_tokens=1024, dead_tokens=256, lr=3e-3)
    [path] = train_saes(TensorSource(x), [SAEConfig(arch="batchtopk", d_in=x.shape[1], width=32, k=4)], train,
                        tmp_path_factory.mktemp("diag") / "saes")
    return path


@pytest.fixture(scope="module")
def contexts(tiny_lm, tiny_corpus):
    from scaffold_sae.corpus import load_corpus, pack_contexts

    corpus = load_corpus(str(tiny_corpus))
    return (pack_contexts(tiny_lm.tokenizer, corpus, 24, 24 * 20, split="heldout", bos_id=tiny_lm.bos_token_id),
            pack_contexts(tiny_lm.tokenizer, corpus, 32, 32 * 60, split="train", bos_id=tiny_lm.bos_token_id))


def test_antipodal_pairs_match_a_loop():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, 3, generator=g)
    w[5] = -w[2] * 3
    latents = [0, 2, 5, 7, 9, 11]
    expect = sorted(((i, j, float(torch.nn.functional.cosine_similarity(w[i].double(), w[j].double(), dim=0)))
                     for a, i in enumerate(latents) for j in latents[a + 1:]), key=lambda p: p[2])
    expect = [p for p in expect if p[2] < -0.5]
    got = antipodal_pairs(w, latents, -0.5)
    assert [(i, j) for i, j, _ in got] == [(i, j) for i, j, _ in expect] and (2, 5) == got[0][:2]
    assert [c for _, _, c in got] == pytest.approx([c for _, _, c in expect])
    assert antipodal_pairs(w, [3], -0.5) == []


def test_diagnose_counts_match_evals_and_writes_the_report(tiny_saved_sae, tiny_lm, contexts, tmp_path):
    from scaffold_sae.evals import evaluate
    from scaffold_sae.saving import load_sae

    sae = load_sae(tiny_saved_sae).eval()
    heldout, train = contexts
    cfg = DiagnoseConfig(tokens=10**6, rank=2, fit="fresh", train_tokens=1024, train_batch_size=256, progress=False)
    result = diagnose(sae, tiny_lm, 1, heldout, tmp_path, cfg, train, name="tiny")
    core = evaluate(sae, tiny_lm, 1, heldout, batch_size=4, progress=False)
    assert result.n_tokens == core.n_tokens
    assert (result.counts.dense_10, result.counts.dense_1) == (core.dense_10, core.dense_1)
    assert result.counts.l0 == pytest.approx(core.l0) and result.counts.fvu == pytest.approx(core.fvu, rel=1e-4)
    assert [d.latent for d in result.dense_latents] == sorted(
        (i for i, v in enumerate(core.density) if v > 0.01), key=lambda i: -core.density[i])
    assert 0 <= result.recon_pc_share <= 1 and result.fit is not None
    assert (result.fit.mode, result.fit.arch, result.fit.k, result.fit.width, result.fit.rank) == (
        "fresh", "batchtopk", 4, 32, 2)
    assert result.fit.before == result.counts and (tmp_path / "fit").is_dir()
    assert "\n" not in result.verdict and "scaffold" in result.verdict
    saved = json.loads((tmp_path / "diagnosis.json").read_text())
    assert saved["verdict"] == result.verdict and saved["fit"]["scaffold"]["dense_1"] == result.fit.scaffold.dense_1
    assert result.verdict in (tmp_path / "diagnosis.md").read_text()
    assert "<table>" in (tmp_path / "diagnosis.html").read_text()
    markdown = (tmp_path / "diagnosis.md").read_text()
    assert "Plots are in diagnosis.html next to this file" in markdown and "report.html" not in markdown


def test_fit_arch_uses_the_measured_l0_for_non_k_archs(tiny_saved_sae):
    from scaffold_sae.saving import load_sae

    sae = load_sae(tiny_saved_sae)
    assert fit_arch(sae, 7.6) == ("batchtopk", 4)
    sae.cfg.arch = "jumprelu"
    assert fit_arch(sae, 7.6) == ("batchtopk", 8)


def test_cli_diagnose(tiny_saved_sae, tiny_lm, tiny_corpus, tmp_path, capsys):
    from scaffold_sae.cli import main

    tiny_lm.hf_model.save_pretrained(tmp_path / "model")
    tiny_lm.tokenizer.save_pretrained(tmp_path / "model")
    main(["diagnose", "--sae", str(tiny_saved_sae), "--model", str(tmp_path / "model"), "--layer", "1",
          "--corpus", str(tiny_corpus), "--tokens", "480", "--ctx-len", "24", "--rank", "2", "--train-tokens", "0",
          "--out", str(tmp_path / "diag"), "--no-progress"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1] == f"wrote {tmp_path / 'diag' / 'diagnosis.html'}"
    assert json.loads((tmp_path / "diag" / "diagnosis.json").read_text())["fit"] is None


def write_saelens_jumprelu(path, w_enc, w_dec, b_enc, b_dec, threshold, model_name: str, hook_name: str) -> None:
    """The files sae-lens 6.54.12 writes for `JumpReLUSAE(JumpReLUSAEConfig(d_in, d_sae, metadata=SAEMetadata(
    model_name=..., hook_name=...))).save_model(path)`: cfg.json is the config's to_dict() (its dataclass fields, the
    metadata with both version fields, and "architecture"), sae_weights.safetensors its state_dict (W_enc [d_in, d_sae],
    W_dec [d_sae, d_in], b_enc, b_dec, threshold)."""
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    d_in, d_sae = w_enc.shape
    save_file({"W_dec": w_dec.contiguous(), "W_enc": w_enc.contiguous(), "b_dec": b_dec.contiguous(),
               "threshold": threshold.contiguous(), "b_enc": b_enc.contiguous()}, str(path / "sae_weights.safetensors"))
    cfg = {"d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"sae_lens_version": "6.54.12", "sae_lens_training_version": "6.54.12",
                        "model_name": model_name, "hook_name": hook_name},
           "architecture": "jumprelu"}
    (path / "cfg.json").write_text(json.dumps(cfg))


def test_diagnose_reads_an_saelens_jumprelu_sae(tiny_saved_sae, tiny_lm, contexts, tmp_path):
    from scaffold_sae.evals import sae_metadata
    from scaffold_sae.saving import load_sae

    ours = load_sae(tiny_saved_sae).eval()
    write_saelens_jumprelu(tmp_path / "saelens", ours.W_enc.detach().clone(), ours.W_dec.detach(), ours.b_enc.detach(),
                           ours.b_dec.detach(), ours.threshold.detach(), "tiny-llama", "blocks.1.hook_resid_post")
    foreign = load_sae(tmp_path / "saelens")
    assert foreign.cfg.arch == "jumprelu" and sae_metadata(foreign) == {"model": "tiny-llama", "layer": 1}
    heldout, train = contexts
    cfg = DiagnoseConfig(tokens=10**6, rank=2, fit="fresh", train_tokens=1024, train_batch_size=256, progress=False)
    theirs = diagnose(foreign, tiny_lm, 1, heldout, tmp_path / "theirs", cfg, train)
    mine = diagnose(ours, tiny_lm, 1, heldout, tmp_path / "mine", DiagnoseConfig(tokens=10**6, rank=2, train_tokens=0,
                                                                                  progress=False))
    assert theirs.arch == "jumprelu" and theirs.counts == mine.counts
    assert theirs.fit.arch == "batchtopk" and theirs.fit.k == max(1, round(theirs.counts.l0))


def _finetune_rows_are_right(result, k: int) -> None:
    """The three rows of a fine-tune fit: the SAE as given (equal to the top-level counts), then the fine-tuned
    pair at L0 near k; the verdict is one sentence naming both fine-tuned dense counts."""
    fit = result.fit
    assert (fit.mode, fit.arch, fit.k, fit.rank, fit.train_tokens) == ("finetune", "batchtopk", k, 2, 1024)
    assert fit.before == result.counts
    for row in (fit.plain, fit.scaffold):
        assert row.l0 == pytest.approx(k, rel=0.35) and 0 <= row.fvu < 1.5
    assert "fine-tuned" in result.verdict and "\n" not in result.verdict and result.verdict.endswith(".")
    assert "rank-2 scaffold" in result.verdict


def test_finetune_fit_starts_from_the_loaded_weights_and_reports_three_rows(tiny_saved_sae, tiny_lm, contexts,
                                                                             tmp_path):
    from scaffold_sae.diagnose import codes_and_recon
    from scaffold_sae.finetune import trainable_copy
    from scaffold_sae.lm_passes import heldout_activations
    from scaffold_sae.saving import load_sae

    sae = load_sae(tiny_saved_sae).eval()
    heldout, train = contexts
    x = heldout_activations(tiny_lm, 1, heldout, 10**6)
    start = trainable_copy(sae, "batchtopk", 4).eval()                     # the fine-tune's starting point
    assert torch.equal(start.b_dec, sae.b_dec)
    assert torch.allclose(start.W_dec, sae.W_dec, atol=1e-6)               # unit rows: the decoder as loaded
    before_codes, before_recon = codes_and_recon(sae, x)
    start_codes, start_recon = codes_and_recon(start, x)
    assert torch.equal(start_codes != 0, before_codes != 0)
    assert torch.allclose(start_codes, before_codes, rtol=1e-5, atol=1e-5)
    assert torch.allclose(start_recon, before_recon, rtol=1e-5, atol=1e-4)

    cfg = DiagnoseConfig(tokens=10**6, rank=2, train_tokens=1024, train_batch_size=256, progress=False)
    result = diagnose(sae, tiny_lm, 1, heldout, tmp_path, cfg, train, name="tiny")
    _finetune_rows_are_right(result, 4)
    assert "with k = 4 in every row" in result.fit.matched_l0 and not (tmp_path / "fit").exists()
    md = (tmp_path / "diagnosis.md").read_text()
    for row in ("| as given |", "| fine-tuned without a scaffold |", "| fine-tuned with a rank-2 scaffold |"):
        assert row in md
    saved = json.loads((tmp_path / "diagnosis.json").read_text())
    assert saved["fit"]["mode"] == "finetune" and saved["fit"]["before"]["dense_1"] == result.counts.dense_1
    assert torch.equal(load_sae(tiny_saved_sae).W_dec, sae.W_dec)          # the user's SAE is not changed


def test_finetune_fit_of_an_saelens_jumprelu_sae_converts_it_at_its_l0(tiny_saved_sae, tiny_lm, contexts, tmp_path):
    from scaffold_sae.diagnose import codes_and_recon
    from scaffold_sae.finetune import trainable_copy
    from scaffold_sae.lm_passes import heldout_activations
    from scaffold_sae.saving import load_sae

    ours = load_sae(tiny_saved_sae).eval()
    g = torch.Generator().manual_seed(3)
    threshold = ours.threshold.detach() * (0.5 + torch.rand(ours.threshold.shape, generator=g))  # per latent
    write_saelens_jumprelu(tmp_path / "saelens", ours.W_enc.detach().clone(), 2.0 * ours.W_dec.detach(),
                           ours.b_enc.detach(), ours.b_dec.detach(), threshold, "tiny-llama", "blocks.1.hook_resid_post")
    foreign = load_sae(tmp_path / "saelens")
    heldout, train = contexts
    x = heldout_activations(tiny_lm, 1, heldout, 10**6)
    start = trainable_copy(foreign, "batchtopk", 5).eval()                  # rows of norm 2 moved into the encoder
    assert torch.allclose(start.W_dec * 2.0, foreign.W_dec, atol=1e-6)
    before_codes, before_recon = codes_and_recon(foreign, x)
    start_codes, start_recon = codes_and_recon(start, x)
    assert torch.equal(start_codes != 0, before_codes != 0)
    assert torch.allclose(start_codes, 2.0 * before_codes, rtol=1e-5, atol=1e-5)
    assert torch.allclose(start_recon, before_recon, rtol=1e-5, atol=1e-4)

    cfg = DiagnoseConfig(tokens=10**6, rank=2, train_tokens=1024, train_batch_size=256, progress=False)
    result = diagnose(foreign, tiny_lm, 1, heldout, tmp_path / "diag", cfg, train)
    k = max(1, round(result.counts.l0))
    _finetune_rows_are_right(result, k)
    assert result.arch == "jumprelu" and "the jumprelu SAE has no k" in result.fit.matched_l0


def test_finetune_refuses_an_sae_with_a_scaffold_and_bad_fit_names(tiny_lm, contexts, tmp_path):
    from scaffold_sae.diagnose import DiagnoseError
    from scaffold_sae.sae import HybridSAE, SAEConfig

    heldout, train = contexts
    hybrid = HybridSAE(SAEConfig(d_in=tiny_lm.d_model, width=16, k=2, rank=2)).eval()
    with pytest.raises(DiagnoseError, match="already has a rank-2 scaffold: use --fit fresh"):
        diagnose(hybrid, tiny_lm, 1, heldout, tmp_path, DiagnoseConfig(rank=2, progress=False), train)
    with pytest.raises(DiagnoseError, match="fit='tune' is invalid: allowed values are finetune, fresh"):
        diagnose(hybrid, tiny_lm, 1, heldout, tmp_path, DiagnoseConfig(fit="tune", progress=False), train)


def test_wrong_width_sae_fails_before_anything_is_written(tiny_lm, contexts, tmp_path):
    """Issue 31 item 1: an SAE of another model's width is refused with one line, and no diagnosis/ folder."""
    from scaffold_sae.diagnose import DiagnoseError
    from scaffold_sae.sae import HybridSAE, SAEConfig

    heldout, train = contexts
    other = HybridSAE(SAEConfig(d_in=tiny_lm.d_model + 8, width=16, k=2)).eval()
    with pytest.raises(DiagnoseError, match=r"^the SAE has input size 72 but tiny-llama has d_model 64: diagnose it "
                                            r"on the model and layer it was trained on$"):
        diagnose(other, tiny_lm, 1, heldout, tmp_path / "diagnosis", DiagnoseConfig(progress=False), train)
    assert not (tmp_path / "diagnosis").exists()
