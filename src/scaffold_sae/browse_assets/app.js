// scaffold-sae feature browser: a hash-routed view over data/index.js and data/latents-NNNN.js (works from file://).
(function () {
  "use strict";
  var site = null, chunks = {}, pending = {};
  var table = { key: "latent", dir: "asc", query: "" };
  var COLUMNS = [
    ["latent", "latent", "num"], ["density", "density", "num"], ["mean_act", "mean act", "num"],
    ["max_act", "max act", "num"], ["align_scaffold", "align span(U)", "num"], ["align_pcs", "align top PCs", "num"],
    ["align_massive", "align massive dims", "num"], ["dense", "dense", "text"], ["top_tokens", "top tokens", "text"]
  ];

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "style") node.style.cssText = attrs[k];
      else node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { node.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return node;
  }
  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v !== "number") return String(v);
    if (v === 0) return "0";
    var a = Math.abs(v);
    return a >= 1e4 || a < 1e-3 ? v.toExponential(2) : String(Number(v.toPrecision(3)));
  }
  function tok(id) { return site.tokens[String(id)]; }
  function show(node) { var app = document.getElementById("app"); app.innerHTML = ""; app.appendChild(node); }

  window.BROWSE = {
    index: function (data) {
      site = data;
      var m = data.meta;
      document.getElementById("meta").textContent = m.model + " · layer " + m.layer + " · " + m.arch + " m=" + m.width +
        " r=" + m.rank + " · " + m.n_tokens + " tokens · " + m.dense_10 + " latents >10%, " + m.dense_1 + " >1% · " +
        m.elapsed_s + " s";
      var links = document.getElementById("scaffold-links");
      data.scaffold.forEach(function (s) { links.appendChild(el("a", { href: "#/scaffold/" + s.direction, text: "U" + s.direction })); });
      route();
    },
    chunk: function (i, data) {
      chunks[i] = data;
      delete pending[i];
      route();
    }
  };
  window.addEventListener("hashchange", route);

  function route() {
    if (!site) return;
    var parts = location.hash.replace(/^#\/?/, "").split("/");
    if (parts[0] === "latent" && parts[1] !== undefined) latentView(parseInt(parts[1], 10));
    else if (parts[0] === "scaffold" && parts[1] !== undefined) scaffoldView(parseInt(parts[1], 10));
    else tableView();
  }

  // ------------------------------------------------------------------ the latent table
  function sortedRows() {
    var q = table.query.trim().toLowerCase(), key = table.key, sign = table.dir === "asc" ? 1 : -1;
    var rows = site.latents.filter(function (r) {
      if (!q) return true;
      if (String(r.latent) === q || r.dense.toLowerCase().indexOf(q) >= 0) return true;
      return r.top_tokens.some(function (t) { return t.toLowerCase().indexOf(q) >= 0; });
    });
    rows.sort(function (a, b) {
      var x = a[key], y = b[key];
      if (Array.isArray(x)) { x = x.join(" "); y = y.join(" "); }
      if (x === null) return 1;
      if (y === null) return -1;
      if (x < y) return -sign;
      if (x > y) return sign;
      return a.latent - b.latent;
    });
    return rows;
  }

  function tableView() {
    var search = el("input", { id: "search", type: "search", placeholder: "latent id, top token or >10%" });
    search.value = table.query;
    var count = el("span", { id: "count" });
    var head = el("tr", {}, COLUMNS.map(function (c) {
      var cls = (c[2] === "text" ? "text " : "") + (table.key === c[0] ? "sorted " + table.dir : "");
      var th = el("th", { "data-key": c[0], "class": cls, text: c[1] });
      th.addEventListener("click", function () {
        if (table.key === c[0]) table.dir = table.dir === "asc" ? "desc" : "asc";
        else { table.key = c[0]; table.dir = c[2] === "num" && c[0] !== "latent" ? "desc" : "asc"; }
        tableView();
      });
      return th;
    }));
    if (!site.meta.rank) head.children[4].title = "no scaffold (rank 0)";
    var body = el("tbody");
    var rows = sortedRows(), limit = 5000;
    rows.slice(0, limit).forEach(function (r) {
      var tr = el("tr", { "data-latent": r.latent, "class": r.dense === ">10%" ? "dense10" : r.dense === ">1%" ? "dense1" : "" }, [
        el("td", {}, [el("a", { href: "#/latent/" + r.latent, text: String(r.latent) })]),
        el("td", { text: fmt(r.density) }), el("td", { text: fmt(r.mean_act) }), el("td", { text: fmt(r.max_act) }),
        el("td", { text: fmt(r.align_scaffold) }), el("td", { text: fmt(r.align_pcs) }),
        el("td", { text: fmt(r.align_massive) }), el("td", { "class": "text flag", text: r.dense }),
        el("td", { "class": "text", text: r.top_tokens.map(JSON.stringify).join(" ") })
      ]);
      body.appendChild(tr);
    });
    count.textContent = rows.length + " of " + site.latents.length + " latents" + (rows.length > limit ? " (first " + limit + " shown)" : "");
    search.addEventListener("input", function () { table.query = search.value; tableView(); document.getElementById("search").focus(); });
    var m = site.meta;
    var note = el("p", { text: "Alignment = ||Q^T w||^2 / ||w||^2 of the decoder row with span(U), the top " + m.n_pcs +
      " PCs of the held-out activations and the massive dims [" + m.massive_dims.join(", ") + "]." });
    show(el("div", {}, [el("div", {}, [search, count]), note, el("table", { id: "latents" }, [el("thead", {}, [head]), body])]));
    var s = document.getElementById("search");
    s.setSelectionRange(s.value.length, s.value.length);
  }

  // ------------------------------------------------------------------ per-latent and per-direction pages
  function contextLine(c, scale, signed) {
    var spans = c.tokens.map(function (id, k) {
      var a = c.acts[k] || 0, alpha = Math.min(1, Math.abs(a) / (scale || 1));
      var color = a >= 0 ? "rgba(255,140,0," + alpha.toFixed(3) + ")" : "rgba(40,110,255," + alpha.toFixed(3) + ")";
      var cls = "tok" + (k === c.top ? " top" : "") + (c.excluded[k] ? " excluded" : "") + (a !== 0 ? " active" : "");
      return el("span", { "class": cls, style: "background:" + color, title: (signed ? "value " : "activation ") + fmt(a) +
        (c.excluded[k] ? " (excluded: BOS, special or sink)" : ""), text: tok(id) });
    });
    return el("div", { "class": "ctx" }, [el("span", { "class": "value", text: fmt(c.value) })].concat(spans));
  }

  function logitTable(title, pairs) {
    return el("table", {}, [el("thead", {}, [el("tr", {}, [el("th", { "class": "text", text: title }), el("th", { text: "logit" })])]),
      el("tbody", {}, pairs.map(function (p) { return el("tr", {}, [el("td", { "class": "text", text: JSON.stringify(tok(p[0])) }), el("td", { text: fmt(p[1]) })]); }))]);
  }

  function histogram(counts) {
    var spec = site.meta.hist_log10, lo = spec[0], hi = spec[1], bins = spec[2];
    var first = counts.findIndex(function (c) { return c > 0; });
    var last = counts.length - 1 - counts.slice().reverse().findIndex(function (c) { return c > 0; });
    var ns = "http://www.w3.org/2000/svg", w = 360, h = 120;
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", w); svg.setAttribute("height", h + 20); svg.setAttribute("class", "hist");
    if (first < 0) { return el("p", { text: "never fired" }); }
    var n = last - first + 1, peak = Math.max.apply(null, counts), bw = w / n;
    for (var i = first; i <= last; i++) {
      var r = document.createElementNS(ns, "rect"), bh = h * counts[i] / peak;
      r.setAttribute("class", "bar"); r.setAttribute("x", (i - first) * bw); r.setAttribute("width", Math.max(1, bw - 1));
      r.setAttribute("y", h - bh); r.setAttribute("height", bh);
      var t = document.createElementNS(ns, "title");
      t.textContent = "activation 10^" + (lo + i * (hi - lo) / bins).toFixed(2) + "…: " + counts[i];
      r.appendChild(t); svg.appendChild(r);
    }
    [first, last + 1].forEach(function (edge, k) {
      var label = document.createElementNS(ns, "text");
      label.setAttribute("x", k ? w - 40 : 0); label.setAttribute("y", h + 14);
      label.textContent = fmt(Math.pow(10, lo + edge * (hi - lo) / bins));
      svg.appendChild(label);
    });
    return svg;
  }

  function latentView(i) {
    var row = site.latents[i];
    if (!row) { show(el("p", { text: "no latent " + i })); return; }
    var c = Math.floor(i / site.meta.chunk);
    if (!chunks[c]) {
      if (!pending[c]) {
        pending[c] = true;
        document.body.appendChild(el("script", { src: "data/latents-" + String(c).padStart(4, "0") + ".js" }));
      }
      show(el("p", { text: "loading latent " + i + "…" }));
      return;
    }
    var d = chunks[c][String(i)];
    var stats = el("table", { "class": "stats" }, [["density", row.density], ["mean activation (when firing)", row.mean_act],
      ["max activation", row.max_act], ["alignment with span(U)", row.align_scaffold], ["alignment with top PCs", row.align_pcs],
      ["alignment with massive dims", row.align_massive], ["dense", row.dense || "no"]].map(function (p) {
      return el("tr", {}, [el("td", { text: p[0] }), el("td", { text: fmt(p[1]) })]);
    }));
    var logits = d.logits ? el("div", { "class": "cols" }, [logitTable("promoted", d.logits.promoted), logitTable("suppressed", d.logits.suppressed)])
      : el("p", { text: "no logit effects: the model's final norm or unembedding was not found" });
    var ctxs = el("div", { id: "contexts" }, d.contexts.map(function (x) { return contextLine(x, row.max_act, false); }));
    if (!d.contexts.length) ctxs.appendChild(el("p", { text: "never fired on the held-out tokens" }));
    show(el("div", { id: "latent-page", "data-latent": i }, [el("h2", { text: "Latent " + i }),
      el("div", { "class": "cols" }, [stats, el("div", {}, [el("h3", { text: "Activation histogram (log scale, when firing)" }), histogram(d.hist)])]),
      el("h3", { text: "Top-activating contexts (boxed: the top token; dotted: excluded from statistics)" }), ctxs,
      el("h3", { text: "Logit effects (direct path through the final norm and unembedding)" }), logits]));
  }

  function scaffoldView(j) {
    var s = site.scaffold[j];
    if (!s) { show(el("p", { text: "no scaffold direction " + j })); return; }
    var scale = Math.max.apply(null, s.top.concat(s.bottom).map(function (c) { return Math.abs(c.value) || 0; }).concat([1e-12]));
    var norms = el("table", { "class": "stats" }, [el("thead", {}, [el("tr", {}, [el("th", { "class": "text", text: "position" }),
      el("th", { text: "mean |V_j^T (x - b_dec)|" }), el("th", { text: "tokens" })])]),
      el("tbody", {}, ["bos", "sink", "ordinary"].map(function (k) {
        return el("tr", {}, [el("td", { text: k }), el("td", { text: fmt(s.mean_abs_by_position[k]) }), el("td", { text: String(s.position_counts[k]) })]);
      }))]);
    var logits = s.logits ? el("div", { "class": "cols" }, [logitTable("promoted by U_j", s.logits.promoted), logitTable("suppressed", s.logits.suppressed)]) : el("p");
    var absorbed = s.absorbed === null ? el("p", { text: "no baseline SAE given (browse --baseline DIR)" }) :
      !s.absorbed.length ? el("p", { text: "none of the baseline's dense latents lies mostly in span(U) nearest this direction" }) :
      el("table", { id: "absorbed" }, [el("thead", {}, [el("tr", {}, ["baseline latent", "density", "align span(U)", "cos with U_j"].map(function (h) { return el("th", { text: h }); }))]),
        el("tbody", {}, s.absorbed.map(function (a) { return el("tr", {}, [el("td", { text: String(a.latent) }), el("td", { text: fmt(a.density) }),
          el("td", { text: fmt(a.align_scaffold) }), el("td", { text: fmt(a.cos) })]); }))]);
    show(el("div", { id: "scaffold-page" }, [el("h2", { text: "Scaffold direction " + j }),
      el("p", { text: "alignment of U_j with the top PCs: " + fmt(s.align_pcs) }), norms,
      el("h3", { text: "Dense baseline latents absorbed (density > 1%, alignment with span(U) >= 0.5)" }), absorbed,
      el("h3", { text: "Logit effects of U_j" }), logits,
      el("h3", { text: "Contexts with the largest coordinate" }), el("div", {}, s.top.map(function (c) { return contextLine(c, scale, true); })),
      el("h3", { text: "Contexts with the smallest coordinate" }), el("div", {}, s.bottom.map(function (c) { return contextLine(c, scale, true); }))]));
  }
})();
