// The absorption explorer: reads data/index.js at once, one SAE's data/sae_NNNN.js when it is shown and
// data/search_X.js (tokens starting with X) when a search needs it, each by inserting a <script> tag (works from file://, no fetch).
// Written by `actstore explore`; the data files call ACTSTORE.indexLoaded, .loaded and .searchLoaded.
// An entry n is one SAE scored on one task; the class buttons are that task's classes. URL: #sae=N&class=C&latent=L
// (#letter=C, the spelling before tasks, is read as #class=C).
"use strict";

var ACTSTORE = (function () {
  var index = null;          // {title, tasks: [{name, classes}], saes: [{n, key, task, id, release, layer, width, ...}]}
  var cache = {};            // n -> one SAE's payload
  var waiting = {};          // n -> callbacks to run once its file has loaded
  var search = {};           // first character -> {texts, byText: lower-case text -> [hit]}, as loaded
  var searchWaiting = {};    // first character -> callbacks to run once its index file has loaded
  var state = {n: null, cls: null, latent: null};
  var loadedFiles = [];      // data files inserted so far (the tests and the benchmark read it)

  function $(id) { return document.getElementById(id); }
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function fmt(x, digits) { return x === null || x === undefined ? "-" : Number(x).toFixed(digits === undefined ? 3 : digits); }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function option(value, text) { var o = el("option", text); o.value = String(value); return o; }

  function loadScript(file) {
    loadedFiles.push(file);
    var s = document.createElement("script");
    s.src = "data/" + file;
    s.onerror = function () { $("loading").textContent = "could not load data/" + file + " (is it beside index.html?)"; };
    document.body.appendChild(s);
  }

  function sae(n) { return index.saes[n]; }
  function saeLabel(s) {
    return "layer " + s.layer + ", " + s.width_name + ", L0 " + fmt(s.l0, 1) + " (" + s.id + ")";
  }

  // ---- choosing an SAE -------------------------------------------------------------------------------------
  function distinct(values) {
    var seen = [];
    values.forEach(function (v) { if (seen.indexOf(v) < 0) seen.push(v); });
    return seen;
  }
  function ofTask(task) { return index.saes.filter(function (s) { return s.task === task; }); }
  function fillSelectors(current) {
    var mine = ofTask(current.task);
    var layers = distinct(mine.map(function (s) { return s.layer; }));
    var widths = distinct(mine.filter(function (s) { return s.layer === current.layer; }).map(function (s) { return s.width; }));
    var same = mine.filter(function (s) { return s.layer === current.layer && s.width === current.width; });
    $("task").value = current.task;
    if ($("sae").dataset.task !== current.task) {  // the SAE menu lists this task's entries (rebuilt on a task change)
      clear($("sae")); mine.forEach(function (s) { $("sae").appendChild(option(s.n, saeLabel(s))); });
      $("sae").dataset.task = current.task;
    }
    clear($("layer")); layers.forEach(function (l) { $("layer").appendChild(option(l, l === null ? "?" : l)); });
    clear($("width"));
    widths.forEach(function (w) {
      var name = index.saes.filter(function (s) { return s.width === w; })[0].width_name;
      $("width").appendChild(option(w, name));
    });
    clear($("l0")); same.forEach(function (s) { $("l0").appendChild(option(s.n, fmt(s.l0, 1) + " (" + s.l0_source + ")")); });
    $("layer").value = String(current.layer); $("width").value = String(current.width); $("l0").value = String(current.n);
    $("sae").value = String(current.n);
  }
  function pick(layer, width) {
    var match = ofTask(sae(state.n).task).filter(function (s) { return String(s.layer) === layer && (width === null || String(s.width) === width); });
    return match.length ? match[0] : null;
  }

  // ---- one SAE -----------------------------------------------------------------------------------------------
  function show(n, cls, latent) {
    state = {n: n, cls: cls || null, latent: latent === undefined ? null : latent};
    var s = sae(n);
    fillSelectors(s);
    $("sae-title").textContent = saeLabel(s);
    $("sae-summary").textContent = "release " + s.release + "; mean absorption fraction " + fmt(s.absorption) +
      ", full-absorption rate " + fmt(s.full_absorption) + " over " + s.classes.length + " evaluated classes of the task " +
      s.task + "; L0 from the " +
      s.l0_source + "; L1 solver " + (s.l1_solver || "not recorded") +
      (s.seeds > 1 ? " (first of " + s.seeds + " seeds; absorption's range over seeds " + fmt(s.absorption_seed_range) + ")" : "") +
      (s.absorption_chance === null || s.absorption_chance === undefined ? "" :
       "; chance level (random decoder, not a zero baseline) " + fmt(s.absorption_chance)) + ".";
    if (cache[n]) { render(); return; }
    $("loading").hidden = false;
    $("class-panel").hidden = true;
    clear($("classes"));
    (waiting[n] = waiting[n] || []).push(function () { if (state.n === n) render(); });
    if (waiting[n].length === 1) loadScript(s.file);
  }

  function render() {
    var data = cache[state.n];
    $("loading").hidden = true;
    if (!state.cls || !data.classes.some(function (l) { return l["class"] === state.cls; })) {
      state.cls = data.classes.length ? data.classes[0]["class"] : null;
    }
    clear($("classes"));
    data.classes.forEach(function (l) {
      var name = l["class"], b = el("button", name.length === 1 ? name.toUpperCase() : name);
      b.type = "button";
      b.dataset["class"] = name;
      b.setAttribute("aria-pressed", String(name === state.cls));
      b.title = "absorption fraction " + fmt(l.mean_absorption_fraction);
      b.appendChild(el("small", fmt(l.mean_absorption_fraction, 2)));
      b.addEventListener("click", function () { go(state.n, name, null); });
      $("classes").appendChild(b);
    });
    if (state.cls) renderClass(data, state.cls);
    if (state.latent !== null && data.absorbers[String(state.latent)]) showAbsorber(state.latent);
    else $("absorber-panel").hidden = true;
    document.body.dataset.state = "ready";
    document.body.dataset.sae = String(state.n);
    document.body.dataset["class"] = state.cls || "";
    document.body.dataset.task = sae(state.n).task;
    if (!document.body.dataset.firstViewMs) document.body.dataset.firstViewMs = String(Math.round(performance.now()));
  }

  function latentNode(latent, extra) {
    var node = $("latent-template").content.firstElementChild.cloneNode(true);
    var b = node.querySelector("button");
    b.textContent = "#" + latent + (extra ? " " + extra : "");
    b.dataset.latent = String(latent);
    b.addEventListener("click", function () { go(state.n, state.cls, latent); });
    var base = sae(state.n).neuronpedia, a = node.querySelector("a");
    if (base) a.href = base + latent; else node.removeChild(a);
    return node;
  }

  function renderClass(data, cls) {
    var l = data.classes.filter(function (x) { return x["class"] === cls; })[0];
    $("class-panel").hidden = false;
    $("class-name").textContent = cls;
    var body = $("prf").tBodies[0];
    clear(body);
    [["ground-truth probe", l.probe_test_precision, l.probe_test_recall, l.probe_test_f1],
     ["main latents (k = " + l.num_split_features + ")", l.main_precision, l.main_recall, l.main_f1],
     ["best single latent #" + l.single_latent, l.single_precision, l.single_recall, l.single_f1]].forEach(function (r) {
      var tr = el("tr");
      r.forEach(function (v, i) { tr.appendChild(el("td", i ? fmt(v) : v)); });
      body.appendChild(tr);
    });
    clear($("main-latents"));
    l.split_latents.forEach(function (latent, i) {
      var li = el("li");
      li.appendChild(latentNode(latent));
      li.appendChild(document.createTextNode(" cos(decoder, probe) " + fmt(l.split_cos_dec[i])));
      $("main-latents").appendChild(li);
    });
    drawKSparse(l.k_sparse_f1, l.num_split_features);

    var tokens = data.tokens[cls] || [];
    $("absorbed-count").textContent = "(" + tokens.length + " of " + l.num_probe_true_positives +
      " probe true positives; absorption fraction " + fmt(l.mean_absorption_fraction) + ", full absorption " +
      fmt(l.full_absorption_rate) + (l.causal_absorption_rate === null || l.causal_absorption_rate === undefined ? "" :
      "; causal absorption " + fmt(l.causal_absorption_rate) + ": both " + l.agree_both + ", projection only " +
      l.agree_projection_only + ", causal only " + l.agree_causal_only + ", neither " + l.agree_neither +
      ", not sampled " + l.agree_unsampled) + ")";
    var tb = $("absorbed").tBodies[0];
    clear(tb);
    tokens.forEach(function (t) {
      var tr = el("tr");
      tr.dataset.row = String(t[0]);
      var td = el("td"); td.appendChild(el("span", t[1], "token")); tr.appendChild(td);
      tr.appendChild(el("td", t[0]));
      tr.appendChild(el("td", fmt(t[2])));
      tr.appendChild(el("td", fmt(t[6])));
      tr.appendChild(el("td", fmt(t[3])));
      tr.appendChild(el("td", t[4] ? "yes" : "no"));
      tr.appendChild(el("td", t[5] ? "yes" : "no"));
      var cell = el("td");
      t[7].forEach(function (a) { cell.appendChild(latentNode(a[0], "(" + fmt(a[1], 2) + ", " + fmt(a[2], 2) + ")")); });
      tr.appendChild(cell);
      var causal = el("td", t[8] === null || t[8] === undefined ? "-" : t[8] ? "yes" : "no");
      if (t[9] !== null && t[9] !== undefined) causal.title = "top latent #" + t[9] + ", score " + fmt(t[10]);
      tr.appendChild(causal);
      tb.appendChild(tr);
    });
  }

  function drawKSparse(f1s, kept) {
    var svg = $("ksparse"), ns = "http://www.w3.org/2000/svg", w = 320, h = 180, left = 36, bottom = 28;
    clear(svg);
    function add(tag, attrs, text) {
      var e = document.createElementNS(ns, tag);
      Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
      if (text !== undefined) e.textContent = text;
      svg.appendChild(e);
      return e;
    }
    var n = Math.max(f1s.length, 2);
    function x(k) { return left + (k - 1) * (w - left - 12) / (n - 1); }
    function y(f) { return h - bottom - f * (h - bottom - 10); }
    add("line", {x1: left, y1: y(0), x2: w - 8, y2: y(0), stroke: "#999"});
    add("line", {x1: left, y1: y(0), x2: left, y2: y(1), stroke: "#999"});
    [0, 0.5, 1].forEach(function (f) { add("text", {x: 4, y: y(f) + 4}, f.toFixed(1)); });
    for (var k = 1; k <= f1s.length; k++) add("text", {x: x(k) - 3, y: h - bottom + 14}, String(k));
    add("text", {x: w / 2 - 4, y: h - 2}, "k");
    add("polyline", {points: f1s.map(function (f, i) { return x(i + 1) + "," + y(f); }).join(" "), fill: "none",
      stroke: "#246", "stroke-width": 2});
    f1s.forEach(function (f, i) {
      var dot = add("circle", {cx: x(i + 1), cy: y(f), r: i + 1 === kept ? 5 : 3, fill: i + 1 === kept ? "#c33" : "#246"});
      dot.appendChild(document.createElementNS(ns, "title")).textContent = "k = " + (i + 1) + ": F1 " + fmt(f);
    });
  }

  function showAbsorber(latent) {
    var a = cache[state.n].absorbers[String(latent)];
    $("absorber-panel").hidden = false;
    var id = $("absorber-id"); clear(id); id.appendChild(latentNode(latent));
    id.dataset.latent = String(latent);
    $("absorber-summary").textContent = "absorbs " + a.num_tokens + " token" + (a.num_tokens === 1 ? "" : "s") +
      " of class" + (a.classes.length === 1 ? " " : "es ") + a.classes.join(", ") + "; mean share of the projection " +
      fmt(a.mean_share) + ".";
    clear($("absorber-top"));
    a.top_tokens.forEach(function (t, i) {
      var li = el("li"); li.appendChild(el("span", t, "token"));
      li.appendChild(document.createTextNode(" " + fmt(a.top_acts[i], 2)));
      $("absorber-top").appendChild(li);
    });
    var p = $("absorber-tokens"); clear(p);
    a.tokens.forEach(function (t) { p.appendChild(el("span", t, "token")); p.appendChild(document.createTextNode(" ")); });
  }

  // ---- searching every SAE -----------------------------------------------------------------------------------
  function shardOf(text) {  // explore.py search_shard
    var first = text.trim().charAt(0).toLowerCase();
    return first >= "a" && first <= "z" ? first : "_";
  }
  function runSearch(query) {
    var q = query.trim().toLowerCase(), shard = shardOf(q);
    if (!q) return;
    if (!search[shard]) {
      (searchWaiting[shard] = searchWaiting[shard] || []).push(function () { runSearch(query); });
      if (searchWaiting[shard].length === 1) loadScript("search_" + shard + ".js");
      return;
    }
    var data = search[shard], hits = data.byText[q] || [];
    $("search-panel").hidden = false;
    $("search-query").textContent = query.trim();
    $("search-summary").textContent = hits.length ? hits.length + " absorptions in " +
      distinct(hits.map(function (h) { return h[1]; })).length + " SAEs" : "absorbed in no SAE of these results";
    var tb = $("search-results").tBodies[0];
    clear(tb);
    hits.forEach(function (h) {
      var s = sae(h[1]), tr = el("tr");
      tr.dataset.sae = String(h[1]); tr.dataset["class"] = h[2]; tr.dataset.latent = h[3] === null ? "" : String(h[3]);
      [s.id, s.task, s.layer, s.width_name, fmt(s.l0, 1), h[2], data.texts[h[0]], h[3] === null ? "-" : "#" + h[3],
       fmt(h[5]), fmt(h[4])].forEach(function (v) { tr.appendChild(el("td", v)); });
      tr.addEventListener("click", function () { go(h[1], h[2], h[3]); });
      tb.appendChild(tr);
    });
    document.body.dataset.searched = q;
  }

  // ---- navigation: the state lives in the URL's hash -----------------------------------------------------------
  function go(n, cls, latent) {
    var hash = "#sae=" + n + (cls ? "&class=" + encodeURIComponent(cls) : "") + (latent !== null && latent !== undefined ? "&latent=" + latent : "");
    if (location.hash === hash) fromHash(); else location.hash = hash;
  }
  function fromHash() {
    var params = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (kv) { var p = kv.split("="); if (p[0]) params[p[0]] = decodeURIComponent(p[1] || ""); });
    var n = Number(params.sae);
    if (!(n >= 0 && n < index.saes.length)) n = 0;
    show(n, params["class"] || params.letter || null, params.latent ? Number(params.latent) : null);
  }

  function indexLoaded(data) {
    index = data;
    var tasks = data.tasks || [{name: "first_letter"}];  // an index written before tasks: first_letter's
    $("title").textContent = data.title + " (" + distinct(data.saes.map(function (s) { return s.key; })).length +
      " SAEs" + (tasks.length > 1 ? ", " + tasks.length + " tasks" : "") + ")";
    data.saes.forEach(function (s) { s.task = s.task || tasks[0].name; });
    tasks.forEach(function (t) { $("task").appendChild(option(t.name, t.name)); });
    $("task-choice").hidden = tasks.length < 2;
    $("task").addEventListener("change", function () {  // the same SAE on that task, else the task's first
      var key = sae(state.n).key, mine = ofTask(this.value);
      var same = mine.filter(function (s) { return s.key === key; });
      if (mine.length) go((same.length ? same[0] : mine[0]).n, null, null);
    });
    $("sae").addEventListener("change", function () { go(Number(this.value), state.cls, null); });
    $("l0").addEventListener("change", function () { go(Number(this.value), state.cls, null); });
    $("layer").addEventListener("change", function () { var s = pick(this.value, null); if (s) go(s.n, state.cls, null); });
    $("width").addEventListener("change", function () { var s = pick($("layer").value, this.value); if (s) go(s.n, state.cls, null); });
    $("search-form").addEventListener("submit", function (e) { e.preventDefault(); runSearch($("search-input").value); });
    $("search-close").addEventListener("click", function () { $("search-panel").hidden = true; });
    window.addEventListener("hashchange", fromHash);
    fromHash();
  }

  function loaded(payload) {
    cache[payload.n] = payload;
    (waiting[payload.n] || []).forEach(function (f) { f(); });
    delete waiting[payload.n];
  }

  function searchLoaded(data) {
    var byText = {};
    data.hits.forEach(function (h) {
      var key = data.texts[h[0]].trim().toLowerCase();
      (byText[key] = byText[key] || []).push(h);
    });
    search[data.shard] = {texts: data.texts, byText: byText};
    (searchWaiting[data.shard] || []).splice(0).forEach(function (f) { f(); });
  }

  return {indexLoaded: indexLoaded, loaded: loaded, searchLoaded: searchLoaded, loadedFiles: loadedFiles};
})();
