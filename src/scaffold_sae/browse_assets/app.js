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
  // Whitespace and control characters as visible symbols, so that a token never breaks or hides a line.
  var SYMBOLS = { "\n": "\u21b5", "\r": "\u240d", "\t": "\u2192", " ": "\u00b7", "\u00a0": "\u237d" };
  function visible(text) {
    return Array.from(String(text)).map(function (ch) {
      if (SYMBOLS[ch]) return SYMBOLS[ch];
      var code = ch.codePointAt(0);
      if (code < 32) return String.fromCodePoint(0x2400 + code);
      if (code === 127 || (code >= 0x80 && code < 0xa0) || code === 0x2028 || code === 0x2029) return "\u2423";
      return ch;
    }).join("");
  }
  function tokenSpan(attrs, text) {
    var node = el("span", attrs), plain = "";
    Array.from(String(text)).forEach(function (ch) {
      var shown = visible(ch);
      if (shown === ch) { plain += ch; return; }
      if (plain) { node.appendChild(document.createTextNode(plain)); plain = ""; }
      node.appendChild(el("span", { "class": "ws", text: shown }));
    });
    if (plain) node.appendChild(document.createTextNode(plain));
    return node;
  }
  function show(node) { var app = document.getElementById("app"); app.innerHTML = ""; app.appendChild(node); }

  window.BROWSE = {
    index: function (data) {
      site = data;
      var m = data.meta;
      var meta = document.getElementById("meta");
      [["model", m.model + ", layer " + m.layer], ["SAE", m.arch + ", " + m.width + " latents, scaffold rank " + m.rank],
        ["held-out tokens", m.n_tokens.toLocaleString("en-US")],
        ["dense latents", m.dense_10 + " fire on >10% of tokens, " + m.dense_1 + " on >1%"], ["dead latents", String(m.dead)],
        ["built in", m.elapsed_s + " s"]].forEach(function (p) {
        meta.appendChild(el("span", { "class": "kv" }, [el("span", { "class": "k", text: p[0] + ": " }), p[1]]));
      });
      var links = document.getElementById("scaffold-links");
      data.scaffold.forEach(function (s) { links.appendChild(el("a", { href: "#/scaffold/" + s.direction, text: "U" + s.direction })); });
      route();
    },
    visible: visible,
    site: function () { return site; },
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
        el("td", { "class": "text", text: r.top_tokens.map(visible).join("  ") })
      ]);
      body.appendChild(tr);
    });
    count.textContent = rows.length + " of " + site.latents.length + " latents" + (rows.length > limit ? " (first " + limit + " shown)" : "");
    search.addEventListener("input", function () { table.query = search.value; tableView(); document.getElementById("search").focus(); });
    var m = site.meta;
    var note = el("p", { text: "Alignment = ||Q^T w||^2 / ||w||^2 of the decoder row with span(U), the top " + m.n_pcs +
      " PCs of the held-out activations and the massive dims [" + m.massive_dims.join(", ") + "]." });
    var plot = el("div", { "class": "plot" }, [el("h3", { text: "Density against mean activation (click a point to open its latent)" }), scatter()]);
    show(el("div", {}, [plot, el("div", {}, [search, count]), note, el("table", { id: "latents" }, [el("thead", {}, [head]), body])]));
    var s = document.getElementById("search");
    s.setSelectionRange(s.value.length, s.value.length);
  }

  // ------------------------------------------------------------------ per-latent and per-direction pages
  function contextLine(c, scale, signed) {
    var spans = c.tokens.map(function (id, k) {
      var a = c.acts[k] || 0, alpha = Math.min(1, Math.abs(a) / (scale || 1));
      var color = a >= 0 ? "rgba(255,140,0," + alpha.toFixed(3) + ")" : "rgba(40,110,255," + alpha.toFixed(3) + ")";
      var cls = "tok" + (k === c.top ? " top" : "") + (c.excluded[k] ? " excluded" : "") + (a !== 0 ? " active" : "");
      return tokenSpan({ "class": cls, style: "background:" + color, title: JSON.stringify(tok(id)) + ": " +
        (signed ? "value " : "activation ") + fmt(a) + (c.excluded[k] ? " (excluded: BOS, special or sink)" : "") }, tok(id));
    });
    return el("div", { "class": "ctx" }, [el("span", { "class": "value", text: fmt(c.value) })].concat(spans));
  }

  function logitTable(title, pairs) {
    return el("table", {}, [el("thead", {}, [el("tr", {}, [el("th", { "class": "text", text: title }), el("th", { text: "logit" })])]),
      el("tbody", {}, pairs.map(function (p) { return el("tr", {}, [el("td", { "class": "text", text: visible(tok(p[0])) }), el("td", { text: fmt(p[1]) })]); }))]);
  }

  // ------------------------------------------------------------------ SVG charts with labelled axes
  var NS = "http://www.w3.org/2000/svg";
  function svgEl(tag, attrs, text) {
    var node = document.createElementNS(NS, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function niceStep(span, target) {
    var raw = span / Math.max(1, target), mag = Math.pow(10, Math.floor(Math.log10(raw))), r = raw / mag;
    return mag * (r <= 1 ? 1 : r <= 2 ? 2 : r <= 5 ? 5 : 10);
  }
  function linearTicks(lo, hi, target) {
    var step = niceStep(hi - lo || 1, target), out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
    return out;
  }
  function logTicks(lo, hi) {
    // log10 range -> tick positions: under a decade, evenly spaced values; else 1, 2, 5 x 10^k (or fewer)
    if (hi - lo < 1) {
      return linearTicks(Math.pow(10, lo), Math.pow(10, hi), 4).filter(function (v) { return v > 0; }).map(Math.log10);
    }
    var out = [], mults = hi - lo > 3 ? [1] : hi - lo > 1.2 ? [1, 3] : [1, 2, 5];
    for (var k = Math.floor(lo) - 1; k <= Math.ceil(hi); k++) {
      mults.forEach(function (m) { var v = k + Math.log10(m); if (v >= lo - 1e-9 && v <= hi + 1e-9) out.push(v); });
    }
    if (out.length < 2) out = [lo, hi];
    return out;
  }
  function axes(svg, box, x, y, xTitle, yTitle) {
    // box = {left, top, width, height}; x, y = {ticks: [[position 0..1, label]...]}
    var b = box;
    svg.appendChild(svgEl("line", { "class": "axis", x1: b.left, y1: b.top + b.height, x2: b.left + b.width, y2: b.top + b.height }));
    svg.appendChild(svgEl("line", { "class": "axis", x1: b.left, y1: b.top, x2: b.left, y2: b.top + b.height }));
    x.ticks.forEach(function (t) {
      var px = b.left + t[0] * b.width;
      svg.appendChild(svgEl("line", { "class": "tick", x1: px, y1: b.top + b.height, x2: px, y2: b.top + b.height + 4 }));
      svg.appendChild(svgEl("text", { "class": "xtick", x: px, y: b.top + b.height + 15, "text-anchor": "middle" }, t[1]));
    });
    y.ticks.forEach(function (t) {
      var py = b.top + (1 - t[0]) * b.height;
      svg.appendChild(svgEl("line", { "class": "tick", x1: b.left - 4, y1: py, x2: b.left, y2: py }));
      svg.appendChild(svgEl("text", { "class": "ytick", x: b.left - 6, y: py + 3, "text-anchor": "end" }, t[1]));
    });
    svg.appendChild(svgEl("text", { "class": "xtitle", x: b.left + b.width / 2, y: b.top + b.height + 32, "text-anchor": "middle" }, xTitle));
    svg.appendChild(svgEl("text", { "class": "ytitle", transform: "translate(12," + (b.top + b.height / 2) + ") rotate(-90)",
      "text-anchor": "middle" }, yTitle));
  }
  function powLabel(log10v) { return fmt(Number(Math.pow(10, log10v).toPrecision(3))); }

  function histogram(hist) {
    // hist = {start, counts}: counts of log10(activation) in the site's fixed bins, trimmed to the filled ones
    var spec = site.meta.hist_log10, lo = spec[0], hi = spec[1], bins = spec[2], per = (hi - lo) / bins;
    if (!hist.counts.length) return el("p", { text: "never fired" });
    var first = Math.max(0, hist.start - 2), last = Math.min(bins - 1, hist.start + hist.counts.length + 1);
    var counts = [];
    for (var i = first; i <= last; i++) counts.push(hist.counts[i - hist.start] || 0);
    var box = { left: 52, top: 8, width: 380, height: 130 }, svg = svgEl("svg", { width: 450, height: 182, "class": "hist" });
    var peak = Math.max.apply(null, counts), xlo = lo + first * per, xhi = lo + (last + 1) * per, bw = box.width / counts.length;
    counts.forEach(function (c, k) {
      var bh = box.height * c / peak, bar = svgEl("rect", { "class": "bar", x: box.left + k * bw, width: Math.max(1, bw - 0.5),
        y: box.top + box.height - bh, height: bh });
      bar.appendChild(svgEl("title", {}, powLabel(xlo + k * per) + " to " + powLabel(xlo + (k + 1) * per) + ": " + c + " tokens"));
      svg.appendChild(bar);
    });
    axes(svg, box, { ticks: logTicks(xlo, xhi).map(function (v) { return [(v - xlo) / (xhi - xlo), powLabel(v)]; }) },
      { ticks: linearTicks(0, peak, 4).map(function (v) { return [v / peak, fmt(v)]; }) },
      "activation (log scale)", "tokens");
    return svg;
  }

  function scatter() {
    // one point per latent that fired: x = log10 density, y = log10 mean activation when firing; densest drawn last
    var rows = site.latents.filter(function (r) { return r.density > 0 && r.mean_act > 0; });
    if (!rows.length) return el("p", { text: "no latent fired on the held-out tokens" });
    rows.sort(function (a, b) { return a.density - b.density || a.latent - b.latent; });
    var lx = rows.map(function (r) { return Math.log10(r.density); }), ly = rows.map(function (r) { return Math.log10(r.mean_act); });
    var x0 = Math.min(Math.min.apply(null, lx), -2) - 0.1, x1 = Math.max(Math.max.apply(null, lx), -1) + 0.1;
    var y0 = Math.min.apply(null, ly) - 0.1, y1 = Math.max.apply(null, ly) + 0.1;
    var box = { left: 56, top: 10, width: 560, height: 240 };
    var svg = svgEl("svg", { width: 640, height: 292, "class": "scatter", id: "scatter" });
    var px = function (v) { return box.left + (v - x0) / (x1 - x0) * box.width; };
    var py = function (v) { return box.top + (1 - (v - y0) / (y1 - y0)) * box.height; };
    [[-2, "1%"], [-1, "10%"]].forEach(function (d) {
      svg.appendChild(svgEl("line", { "class": "guide", x1: px(d[0]), y1: box.top, x2: px(d[0]), y2: box.top + box.height }));
      svg.appendChild(svgEl("text", { "class": "guide-label", x: px(d[0]) + 3, y: box.top + 10 }, "dense " + d[1]));
    });
    rows.forEach(function (r, k) {
      var link = svgEl("a", { href: "#/latent/" + r.latent, "data-latent": r.latent });
      var dot = svgEl("circle", { cx: px(lx[k]), cy: py(ly[k]), r: 3,
        "class": "pt" + (r.dense === ">10%" ? " dense10" : r.dense === ">1%" ? " dense1" : "") });
      dot.appendChild(svgEl("title", {}, "latent " + r.latent + ": density " + fmt(r.density) + ", mean activation " + fmt(r.mean_act)));
      link.appendChild(dot);
      svg.appendChild(link);
    });
    axes(svg, box, { ticks: logTicks(x0, x1).map(function (v) { return [(v - x0) / (x1 - x0), fmt(Number(Math.pow(10, v).toPrecision(3)))]; }) },
      { ticks: logTicks(y0, y1).map(function (v) { return [(v - y0) / (y1 - y0), powLabel(v)]; }) },
      "firing density (share of held-out tokens, log scale)", "mean activation when firing");
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
    var groups = (d.quantiles || []).slice().reverse(), nq = groups.length;
    var quant = el("div", { id: "quantiles" }, groups.map(function (g, k) {
      return el("div", { "class": "qgroup" }, [el("h4", { text: "Quantile group " + (nq - k) + " of " + nq +
        (k === 0 ? " (highest)" : k === nq - 1 ? " (lowest)" : "") + ": activation " + fmt(g.lo) + " to " + fmt(g.hi) }),
        el("div", {}, g.contexts.slice().reverse().map(function (x) { return contextLine(x, row.max_act, false); }))]);
    }));
    show(el("div", { id: "latent-page", "data-latent": i }, [el("h2", { text: "Latent " + i }),
      el("div", { "class": "cols" }, [stats, el("div", {}, [el("h3", { text: "Activation histogram (log scale, when firing)" }), histogram(d.hist)])]),
      el("div", { "class": "cols ctxcols" }, [
        el("div", {}, [el("h3", { text: "Top-activating contexts (boxed: the top token; dotted: excluded from statistics)" }), ctxs]),
        el("div", {}, [el("h3", { text: "Random contexts by activation quantile (of the contexts it fires in)" }), quant])]),
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
