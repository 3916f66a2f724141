"""Feature browser: the streaming top-n, densities and logit effects against slow references, the site's files,
and the site in a real headless Chromium."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scaffold_sae import browse
from scaffold_sae.browse import BrowseConfig, TopContexts, best_positions, build_site, windows


@pytest.fixture(scope="module")
def tiny_sae(tiny_lm, tiny_corpus, tmp_path_factory):
    """Batchtopk SAEs of rank 2 and (the baseline) rank 0 trained for a few steps on layer 1 of the tiny Llama:
    (rank-2 path, rank-2 SAE, baseline SAE)."""
    from scaffold_sae.cache import harvest
    from scaffold_sae.sae import SAEConfig
    from scaffold_sae.saving import load_sae
    from scaffold_sae.trainer import TrainConfig, train_saes

    root = tmp_path_factory.mktemp("browse")
    cache = harvest(tiny_lm, 1, str(tiny_corpus), 2048, root / "cache", ctx_len=32, progress=False)
    train = TrainConfig(tokens=256 * 8, batch_size=256, progress=False, checkpoint_every=0, log_every=4,
                        init_sample_tokens=1024, threshold_sample_tokens=1024, dead_tokens=256, lr=3e-3)
    path, base = train_saes(cache, [SAEConfig(arch="batchtopk", width=48, k=4, rank=r) for r in (2, 0)], train,
                            root / "saes")
    return path, load_sae(path).eval(), load_sae(base).eval()


@pytest.fixture(scope="module")
def heldout(tiny_lm, tiny_corpus):
    from scaffold_sae.corpus import load_corpus, pack_contexts

    return pack_contexts(tiny_lm.tokenizer, load_corpus(str(tiny_corpus)), ctx_len=24, n_tokens=24 * 20,
                         split="heldout", bos_id=tiny_lm.bos_token_id)


@pytest.fixture(scope="module")
def site(tiny_sae, tiny_lm, heldout, tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    cfg = BrowseConfig(top_n=5, batch_size=6, progress=False)
    index = build_site(tiny_sae[1], tiny_lm, 1, heldout, out, cfg, baseline=tiny_sae[2])
    return index, json.loads((out / "site.json").read_text())


def test_top_contexts_keeps_exactly_the_top_n_of_a_stream():
    g = torch.Generator().manual_seed(0)
    width, n, window, seen = 7, 5, 3, []
    top = TopContexts(width, n, window)
    start = 0
    for b in (4, 1, 9, 3, 6):
        scores = torch.rand(b, width, generator=g)
        positions = torch.randint(0, 30, (b, width), generator=g)
        wins = torch.rand(b, width, window, generator=g)
        top.update(scores, torch.arange(start, start + b), positions, wins)
        seen += [(start + r, scores[r], positions[r], wins[r]) for r in range(b)]
        start += b
    for j in range(width):
        reference = sorted(((float(s[j]), c, int(p[j]), w[j].tolist()) for c, s, p, w in seen), reverse=True)[:n]
        kept = top.column(j)
        assert [(c, p) for _, c, p, _ in kept] == [(c, p) for _, c, p, _ in reference]
        for (v, _, _, w), (rv, _, _, rw) in zip(kept, reference):
            assert v == pytest.approx(rv) and w == pytest.approx(rw)


def test_top_contexts_with_fewer_contexts_than_n():
    top = TopContexts(2, 4, 1)
    top.update(torch.tensor([[1.0, 2.0]]), torch.tensor([7]), torch.tensor([[3, 4]]), torch.ones(1, 2, 1))
    assert [(c, p) for _, c, p, _ in top.column(1)] == [(7, 4)]


def test_best_positions_and_windows_match_a_loop():
    g = torch.Generator().manual_seed(1)
    codes = torch.rand(3, 9, 4, generator=g)
    keep = torch.rand(3, 9, generator=g) > 0.3
    keep[:, 0] = False
    scores, positions = best_positions(codes, keep)
    wins = windows(codes, positions, 2, 1)
    for b in range(3):
        for j in range(4):
            kept = [t for t in range(9) if keep[b, t]]
            best = max(kept, key=lambda t: float(codes[b, t, j]))
            assert int(positions[b, j]) == best and float(scores[b, j]) == float(codes[b, best, j])
            expect = [float(codes[b, t, j]) if 0 <= t < 9 else 0.0 for t in range(best - 2, best + 2)]
            assert wins[b, j].tolist() == pytest.approx(expect)


def test_log_histogram_matches_numpy():
    import numpy as np

    g = torch.Generator().manual_seed(2)
    values = torch.rand(500, generator=g).pow(4) * 50 + 1e-6
    cols = torch.randint(0, 3, (500,), generator=g)
    counts = browse.log_histogram(values, cols, 3)
    edges = np.linspace(browse.HIST_LOG10_MIN, browse.HIST_LOG10_MAX, browse.HIST_BINS + 1)
    for j in range(3):
        logs = np.clip(np.log10(values[cols == j].double().numpy()), edges[0], edges[-1])  # clipped into end bins
        ref, _ = np.histogram(logs, bins=edges)
        assert counts[j].tolist() == ref.tolist()


def test_quantile_groups_cut_the_sorted_sample_into_equal_groups():
    sample = [(v, c, 0, []) for c, v in enumerate([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8])]
    groups = browse.quantile_groups(sample, 3)
    assert [[v for v, *_ in g] for g in groups] == [[0.1, 0.2], [0.3, 0.5], [0.7, 0.8, 0.9]]
    assert browse.quantile_groups(sample[:2], 5) == [[sample[1]], [sample[0]]]
    assert browse.trimmed([0, 0, 3, 0, 1, 0]) == {"start": 2, "counts": [3, 0, 1]}
    assert browse.trimmed([0, 0]) == {"start": 0, "counts": []}


def test_quantile_samples_hold_every_firing_context_when_few(site, tiny_sae, tiny_lm, heldout):
    """With 20 contexts and a sample of 5 x 5, each latent's quantile groups hold exactly the contexts it fires in
    (at a kept position), ordered by the context's largest code; the histogram counts its firing tokens."""
    from scaffold_sae.lm_passes import eval_mask

    sae = tiny_sae[1]
    assert site[1]["meta"]["n_contexts"] == heldout.shape[0] == 20
    with torch.no_grad():
        resid = tiny_lm.residual(heldout, 1)
        keep = eval_mask(tiny_lm, resid, heldout, browse.DEFAULT_SINK_FACTOR)
        codes = sae(resid.reshape(-1, resid.shape[-1])).codes.view(*heldout.shape, -1)
    chunk = json.loads((index_dir(site) / "data" / "latents-0000.js").read_text()[len("BROWSE.chunk(0, "):-3])
    for i in range(sae.W_dec.shape[0]):
        masked = codes[:, :, i].masked_fill(~keep, 0)
        fired = {c for c in range(heldout.shape[0]) if masked[c].max() > 0}
        groups = chunk[str(i)]["quantiles"]
        shown = [(e["context"], e["value"]) for g in groups for e in g["contexts"]]
        assert {c for c, _ in shown} == fired and len(shown) == len(fired)
        assert [v for _, v in shown] == sorted(v for _, v in shown)
        for c, v in shown:
            assert v == pytest.approx(float(masked[c].max()), rel=1e-3)
        assert all(g["lo"] <= g["hi"] for g in groups)
        assert sum(chunk[str(i)]["hist"]["counts"]) == int((masked > 0).sum())


def index_dir(site):
    return site[0].parent


def test_logit_effects_match_an_explicit_rmsnorm_and_unembedding(tiny_lm, tiny_sae):
    sae = tiny_sae[1]
    norm, head = browse.final_norm_and_head(tiny_lm)
    assert norm is tiny_lm.hf_model.model.norm and head is tiny_lm.hf_model.lm_head
    effects = browse.logit_effects(sae.W_dec.detach(), norm, head)
    gain, eps, w_u = norm.weight.detach(), norm.variance_epsilon, head.weight.detach()
    d = sae.W_dec.shape[1]
    for i in range(sae.W_dec.shape[0]):
        w = sae.W_dec[i].detach().double()
        v = w / w.norm() * math.sqrt(d)
        ref = (w_u.double() @ (gain.double() * v / torch.sqrt(v.pow(2).mean() + eps))).float()
        assert torch.allclose(effects[i], ref, atol=1e-4, rtol=1e-4)
    pos_v, pos_i, neg_v, neg_i = browse.top_logit_effects(sae.W_dec.detach(), norm, head, n=5, chunk=7)
    assert torch.equal(pos_i, effects.topk(5, dim=1).indices) and torch.equal(neg_i, (-effects).topk(5, dim=1).indices)


def test_absorbed_latents_are_the_dense_ones_in_span_u():
    u = torch.zeros(6, 2)
    u[0, 0], u[1, 1] = 1.0, 2.0
    w = torch.tensor([[0.1, 1.0, 0, 0, 0, 0], [0, 0, 1.0, 0, 0, 0], [1.0, 0, 0, 0, 0, 0], [-1.0, 0.2, 0.3, 0, 0, 0],
                      [0.5, 0.5, 0.6, 0.6, 0, 0]])
    density = torch.tensor([0.3, 0.5, 0.001, 0.6, 0.4], dtype=torch.float64)
    out = browse.absorbed_latents(w, density, u)
    assert [[a["latent"] for a in d] for d in out] == [[3], [0]]
    assert out[0][0]["cos"] < 0 and out[1][0]["cos"] > 0


def test_site_densities_match_evals_and_the_files_are_complete(site, tiny_sae, tiny_lm, heldout):
    from scaffold_sae.evals import evaluate

    index, data = site
    core = evaluate(tiny_sae[1], tiny_lm, 1, heldout, batch_size=6, progress=False)
    assert [row["density"] for row in data["latents"]] == pytest.approx(core.density, abs=1e-6)
    assert data["meta"]["n_tokens"] == core.n_tokens and data["meta"]["dense_10"] == core.dense_10
    assert data["meta"]["elapsed_s"] > 0 and len(data["scaffold"]) == 2
    out = index.parent
    assert {p.name for p in out.iterdir()} == {"index.html", "app.js", "style.css", "site.json", "data"}
    assert (out / "data" / "latents-0000.js").read_text().startswith("BROWSE.chunk(0, ")
    assert "http" not in (out / "index.html").read_text() and "http://" not in (out / "app.js").read_text().replace(
        "http://www.w3.org/2000/svg", "")
    absorbed = [a for direction in data["scaffold"] for a in direction["absorbed"]]
    assert all(a["density"] > 0.01 and a["align_scaffold"] >= 0.5 for a in absorbed)
    for direction in data["scaffold"]:
        assert set(direction["mean_abs_by_position"]) == {"bos", "sink", "ordinary"}
        assert direction["position_counts"]["bos"] == heldout.shape[0]
        for entries, sign in ((direction["top"], 1), (direction["bottom"], -1)):
            values = [c["value"] for c in entries]
            assert values == sorted(values, reverse=sign > 0)
            assert all(c["acts"][c["top"]] == c["value"] for c in entries)  # windows hold the signed coordinate


# ----------------------------------------------------------------------------------------------------------
# The site in a real browser: headless Chromium driven over the DevTools protocol on a pipe (no extra packages)
# ----------------------------------------------------------------------------------------------------------


def find_chromium() -> str | None:
    import shutil

    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome") if shutil.which(n)),
                None)


class Chromium:
    """Headless Chromium with --remote-debugging-pipe: commands on its fd 3, replies on its fd 4, NUL-separated
    JSON."""

    def __init__(self, binary: str, url: str, profile):
        import fcntl
        import os
        import subprocess

        cmd_r, self.cmd_w = os.pipe()
        self.evt_r, evt_w = os.pipe()
        high_r, high_w = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(evt_w, fcntl.F_DUPFD, 10)

        def wire():
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             "--remote-debugging-pipe",
             f"--user-data-dir={profile}", "--window-size=1280,900", url],
            preexec_fn=wire, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in (cmd_r, evt_w, high_r, high_w):
            os.close(fd)
        self.buffer, self.next_id, self.session = b"", 0, None

    def send(self, method: str, params: dict | None = None, timeout: float = 30.0) -> dict:
        import os
        import select
        import time

        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self.cmd_w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.evt_r], [], [], left)[0]:
                raise TimeoutError(f"chromium did not answer {method}")
            chunk = os.read(self.evt_r, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium exited")
            self.buffer += chunk

    def attach(self, url_prefix: str) -> None:
        import time

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pages = [t for t in self.send("Target.getTargets")["targetInfos"]
                     if t["type"] == "page" and t["url"].startswith(url_prefix)]
            if pages:
                self.session = self.send("Target.attachToTarget", {"targetId": pages[0]["targetId"],
                                                                   "flatten": True})["sessionId"]
                return
            time.sleep(0.1)
        raise TimeoutError(f"no page at {url_prefix}")

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0):
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"still false after {timeout}s: {expression}")

    def click(self, selector: str) -> None:
        """A real mouse click (press and release) at the centre of the first element matching selector."""
        box = self.js(f"(function(){{var e=document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block:'center'}});"
                      f"var r=e.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2];}})()")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                                   "clickCount": 1})

    def close(self) -> None:
        import os

        try:
            self.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.cmd_w, self.evt_r):
            os.close(fd)


@pytest.fixture(scope="module")
def browser(site, tmp_path_factory):
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium found (chromium, chromium-browser, google-chrome): `make browser` installs Debian's "
                    "chromium where apt-get is available")
    url = site[0].resolve().as_uri()
    chrome = Chromium(binary, url, tmp_path_factory.mktemp("chromium-profile"))
    try:
        chrome.attach("file://")
        yield chrome
    finally:
        chrome.close()


ROWS = "Array.from(document.querySelectorAll('#latents tbody tr')).map(function (r) { return +r.dataset.latent; })"


def test_browser_table_renders_and_sorts_by_density(browser, site):
    data = site[1]
    width = data["meta"]["width"]
    assert browser.wait_for(f"document.querySelectorAll('#latents tbody tr').length === {width}")
    assert browser.js(ROWS) == list(range(width))
    density = {row["latent"]: row["density"] for row in data["latents"]}
    browser.click("th[data-key=density]")
    browser.wait_for("document.querySelector('th[data-key=density]').classList.contains('desc')")
    assert browser.js(ROWS) == sorted(range(width), key=lambda i: (-density[i], i))
    browser.click("th[data-key=density]")
    browser.wait_for("document.querySelector('th[data-key=density]').classList.contains('asc')")
    assert browser.js(ROWS) == sorted(range(width), key=lambda i: (density[i], i))


def test_browser_latent_page_highlights_contexts(browser, site):
    data = site[1]
    densest = max(data["latents"], key=lambda row: (row["density"], -row["latent"]))["latent"]
    browser.js("location.hash = '#/'")
    browser.wait_for("document.querySelector('th[data-key=density]') !== null")
    browser.js("document.getElementById('search').value = '';")
    browser.click("th[data-key=density]")  # the table keeps its last order (ascending): click once more for desc
    if browser.js("document.querySelector('th[data-key=density]').classList.contains('asc')"):
        browser.click("th[data-key=density]")
    browser.click(f"tr[data-latent='{densest}'] a")
    n_contexts = browser.wait_for("document.querySelectorAll('#contexts .ctx').length")
    assert browser.js("location.hash") == f"#/latent/{densest}"
    assert n_contexts == min(5, data["meta"]["n_contexts"])
    lit = browser.js("Array.from(document.querySelectorAll('#contexts .tok.active')).filter(function (s) {"
                     " return getComputedStyle(s).backgroundColor !== 'rgba(0, 0, 0, 0)'; }).length")
    assert lit >= n_contexts
    assert browser.js("document.querySelectorAll('#contexts .tok.top').length") == n_contexts
    assert browser.js("document.querySelector('#latent-page svg.hist rect') !== null")
    groups = data_chunk(site)[str(densest)]["quantiles"]
    assert browser.js("document.querySelectorAll('#quantiles .qgroup').length") == len(groups)
    assert browser.js("document.querySelectorAll('#quantiles .ctx').length") == sum(len(g["contexts"]) for g in groups)
    axis_text = browser.js("Array.from(document.querySelectorAll('#latent-page svg.hist text')).map(function (t) {"
                           " return t.getAttribute('class') + ':' + t.textContent; })")
    assert "xtitle:activation (log scale)" in axis_text and "ytitle:tokens" in axis_text
    assert len([t for t in axis_text if t.startswith("xtick:")]) >= 2
    assert len([t for t in axis_text if t.startswith("ytick:")]) >= 2
    browser.js("location.hash = '#/scaffold/1'")
    assert browser.wait_for("document.querySelector('#scaffold-page h2') && "
                            "document.querySelector('#scaffold-page h2').textContent") == "Scaffold direction 1"
    rows = browser.js("document.querySelectorAll('#absorbed tbody tr').length")
    assert rows == len(data["scaffold"][1]["absorbed"])


def data_chunk(site) -> dict:
    text = (index_dir(site) / "data" / "latents-0000.js").read_text()
    return json.loads(text[len("BROWSE.chunk(0, "):-3])


def test_browser_header_is_labelled_and_the_scatter_links_latents(browser, site):
    data = site[1]
    browser.js("location.hash = '#/'")
    assert browser.wait_for("document.querySelector('#scatter') !== null")
    labels = browser.js("Array.from(document.querySelectorAll('#meta .k')).map(function (k) { return k.textContent; })")
    assert labels == ["model: ", "SAE: ", "held-out tokens: ", "dense latents: ", "dead latents: ", "built in: "]
    assert f"{data['meta']['dense_10']} fire on >10% of tokens" in browser.js("document.getElementById('meta').textContent")
    fired = [row for row in data["latents"] if row["density"] > 0]
    points = browser.js("Array.from(document.querySelectorAll('#scatter a')).map(function (a) {"
                        " return +a.getAttribute('data-latent'); })")
    assert sorted(points) == sorted(row["latent"] for row in fired)
    titles = browser.js("Array.from(document.querySelectorAll('#scatter text')).map(function (t) { return t.textContent; })")
    assert "mean activation when firing" in titles and any(t.startswith("firing density") for t in titles)
    densest = points[-1]  # drawn last, so on top
    browser.click(f"#scatter a[data-latent='{densest}'] circle")
    browser.wait_for(f"location.hash === '#/latent/{densest}'")
    browser.wait_for("document.querySelectorAll('#contexts .ctx').length > 0")


def test_browser_shows_whitespace_as_symbols_on_one_line(browser, site):
    assert browser.js("BROWSE.visible('a\\nb\\tc d\\r\\u0001')") == "a\u21b5b\u2192c\u00b7d\u240d\u2401"
    latent = site[1]["latents"][0]["latent"]
    browser.js("location.hash = '#/'")
    browser.wait_for("document.querySelector('#scatter') !== null")
    token = data_chunk(site)[str(latent)]["contexts"][0]["tokens"][0]
    browser.js(f"BROWSE.site().tokens['{token}'] = 'two\\nlines\\there'; location.hash = '#/latent/{latent}'")
    browser.wait_for("document.querySelectorAll('#contexts .ctx').length > 0")
    heights = browser.js("Array.from(document.querySelectorAll('#contexts .ctx')).map(function (c) { return c.offsetHeight; })")
    assert len(set(heights)) == 1
    text = browser.js("document.getElementById('contexts').textContent")
    assert "two\u21b5lines\u2192here" in text and "\n" not in text
    assert browser.js("document.querySelectorAll('#contexts .ws').length") >= 2


def test_wrong_width_sae_is_refused_with_a_fix(tiny_lm, heldout, tmp_path):
    from scaffold_sae.sae import HybridSAE, SAEConfig

    with pytest.raises(browse.BrowseError, match="trained on"):
        build_site(HybridSAE(SAEConfig(d_in=32, width=8, k=2)), tiny_lm, 1, heldout, tmp_path)


def test_cli_browse_writes_a_site(tiny_sae, tiny_lm, tiny_corpus, tmp_path, capsys):
    from scaffold_sae.cli import main

    tiny_lm.hf_model.save_pretrained(tmp_path / "model")
    tiny_lm.tokenizer.save_pretrained(tmp_path / "model")
    main(["browse", "--sae", str(tiny_sae[0]), "--model", str(tmp_path / "model"), "--layer", "1", "--corpus",
          str(tiny_corpus), "--tokens", "240", "--ctx-len", "24", "--top-n", "3", "--out", str(tmp_path / "site"),
          "--no-progress"])
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'site' / 'index.html'}"
    data = json.loads((tmp_path / "site" / "site.json").read_text())
    assert len(data["latents"]) == 48 and data["meta"]["n_contexts"] == 10 and data["meta"]["rank"] == 2


def test_site_server_serves_the_site(site):
    import threading
    import urllib.request

    server = browse.site_server(site[0].parent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an http_proxy
        assert b"data/index.js" in opener.open(base, timeout=10).read()
        assert opener.open(base + "data/index.js", timeout=10).read().startswith(b"BROWSE.index(")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
