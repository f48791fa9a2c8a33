// panicflow report page: progress numbers (polled live under `panicflow report --serve`) and the run viewer.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("pf-data").textContent);
  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, text) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };

  // ------------------------------------------------------------------ progress
  function bar(parent, label, done, total) {
    parent.append(el("span", {}, label));
    const b = el("div", { class: "bar" });
    const fill = el("span");
    fill.style.width = (total ? Math.min(100, (100 * done) / total) : 0).toFixed(1) + "%";
    b.append(fill);
    parent.append(b, el("span", { class: "count" }, `${done} / ${total}`));
  }

  function renderStatus(s) {
    const badge = $("state");
    badge.textContent = s.state;
    badge.className = "badge " + s.state;
    const bars = $("bars");
    bars.replaceChildren();
    // steps first: runs end in waves ("runs ended" reads 3 / 32 when 94% of the steps are done)
    if (s.invocations_max) bar(bars, "steps (invocations)", s.invocations, s.invocations_max);
    bar(bars, "runs ended", s.runs_complete + s.runs_failed, s.runs);
    for (const [m, n] of Object.entries(s.embeddings)) bar(bars, `embeddings ${m}`, n, s.runs);
    for (const [m, n] of Object.entries(s.persistence_diagrams)) bar(bars, `diagrams ${m}`, n, s.runs);
    const facts = $("facts");
    facts.replaceChildren();
    const fact = (k, v) => facts.append(el("dt", {}, k), el("dd", {}, v));
    if (s.eta_text) fact("time left", s.eta_text);
    fact("runs", `${s.runs_complete} complete, ${s.runs_failed} failed, ${s.runs} in all`);
    fact("invocations", `${s.invocations}` + (Object.keys(s.invocations_by_model || {}).length
      ? " (" + Object.entries(s.invocations_by_model).map(([m, n]) => `${m}: ${n}`).join(", ") + ")" : ""));
    const reasons = Object.entries(s.stop_reasons).sort();
    fact("stop reasons", reasons.length ? reasons.map(([r, n]) => `${r}: ${n}`).join(", ") : "none yet");
    for (const [m, o] of Object.entries(s.diagram_outcomes || {})) {
      if (Object.values(o).some((n) => n)) fact(`diagrams ${m}`, Object.entries(o).map(([k, n]) => `${n} ${k}`).join(", "));
    }
    for (const [run, error] of Object.entries(s.errors || {}).slice(0, 5)) fact(`run ${run} failed`, error.split("\n")[0]);
    if (s.error) fact("error", s.error);
    const ended = s.runs_complete + s.runs_failed;
    $("reload-note").hidden = !(DATA.live && ended > DATA.runsEnded);
    $("reload-note").textContent = `${ended - DATA.runsEnded} more runs have ended since this page was made: reload to see them.`;
  }

  async function poll() {
    try {
      const r = await fetch("api/status", { cache: "no-store" });
      if (r.ok) {
        renderStatus(await r.json());
        $("updated").textContent = " · updated " + new Date().toLocaleTimeString();
      }
    } catch (e) {
      $("updated").textContent = " · the report server is not answering";
    }
    setTimeout(poll, DATA.pollMs);
  }

  // -------------------------------------------------------------------- viewer
  const viewer = { run: null, frames: [], index: 0 };
  const src = (hash) => (DATA.images ? DATA.images["v:" + hash] : "object/" + hash);
  const rowOf = new Map((DATA.runs || []).map((r) => [r.run, r]));

  async function framesOf(run) {
    if (!DATA.live) return DATA.viewer[run] || [];
    const r = await fetch(`api/run/${run}`, { cache: "no-store" });
    return r.ok ? (await r.json()).frames : [];
  }

  function show(i) {
    const n = viewer.frames.length;
    if (!n) {
      $("viewer-pos").textContent = "no images";
      $("viewer-caption").textContent = "";
      return;
    }
    viewer.index = Math.max(0, Math.min(n - 1, i));
    const f = viewer.frames[viewer.index];
    $("viewer-image").src = src(f.hash);
    $("viewer-image").alt = `run ${viewer.run}, step ${f.step}`;
    $("viewer-caption").textContent = f.caption || "(no caption)";
    // a written page may hold some of a run's pictures: say of how many
    const all = DATA.live ? n : (DATA.pictures || {})[viewer.run] || n;
    $("viewer-pos").textContent = `step ${f.step} · ${f.model} · image ${viewer.index + 1} / ${n}` +
      (all > n ? ` (${n} of the run's ${all} pictures)` : "");
    $("viewer-slider").max = String(n - 1);
    $("viewer-slider").value = String(viewer.index);
    $("viewer-prev").disabled = viewer.index === 0;
    $("viewer-next").disabled = viewer.index === n - 1;
  }

  function describe(run) {
    // the prompt leads: it is what the run was started from
    const info = $("viewer-info");
    info.replaceChildren();
    const r = rowOf.get(run);
    if (!r) return;
    info.append(el("div", { class: "prompt" }, `“${r.prompt}”`));
    const seed = r.seed === "unseeded" ? "unseeded" : `seed ${r.seed}`;
    const line = el("div", { class: "sub" }, `run ${r.run} · ${r.network} · ${seed} · ${r.ending} · `);
    const back = el("a", { href: `#row-${r.run}` }, "its row in the table");
    line.append(back);
    info.append(line);
  }

  async function openRun(run) {
    viewer.run = run;
    $("viewer-run").value = String(run);
    describe(run);
    viewer.frames = await framesOf(run);
    if (viewer.run === run) show(0);
  }

  function step(delta) {
    if (viewer.frames.length) show(viewer.index + delta);
  }

  function viewable(run) {
    return [...$("viewer-run").options].some((o) => Number(o.value) === run);
  }

  // #run-N opens run N in the viewer: the table's run links, a row's click, a link to the page;
  // #cluster-... opens the (closed) gallery that holds that cluster's row
  function followHash() {
    const target = location.hash.startsWith("#cluster-") && document.getElementById(location.hash.slice(1));
    if (target) {
      const box = target.closest("details");
      if (box && !box.open) box.open = true;
      target.scrollIntoView();
      return false;
    }
    const m = /^#run-(\d+)$/.exec(location.hash);
    if (!m || !viewable(Number(m[1]))) return false;
    openRun(Number(m[1]));
    $("viewer").scrollIntoView();
    return true;
  }

  function setupViewer() {
    const select = $("viewer-run");
    if (!select || !select.options.length) return;
    $("viewer-prev").addEventListener("click", () => step(-1));
    $("viewer-next").addEventListener("click", () => step(1));
    $("viewer-slider").addEventListener("input", (e) => show(Number(e.target.value)));
    select.addEventListener("change", () => openRun(Number(select.value)));
    document.addEventListener("keydown", (e) => {
      const t = e.target.tagName;
      if (t === "INPUT" || t === "SELECT" || t === "TEXTAREA" || e.altKey || e.ctrlKey || e.metaKey) return;
      if ($("lightbox").open) return;
      if (e.key === "ArrowRight") { step(1); e.preventDefault(); }
      if (e.key === "ArrowLeft") { step(-1); e.preventDefault(); }
    });
    for (const b of document.querySelectorAll("button[data-run]")) {
      b.addEventListener("click", () => {
        openRun(Number(b.dataset.run));
        $("viewer").scrollIntoView({ behavior: "smooth" });
      });
    }
    if (!followHash()) openRun(Number(select.options[0].value));
  }

  // ---------------------------------------------------------------- runs table
  // Filters and sorting in plain script over DATA.runs, whose order is the table's rows' order.
  const table = { rows: [], key: "run", dir: 1 };

  function distinct(values) {
    return [...new Set(values)];
  }

  function choice(id, label, values) {
    const sel = el("select", { id });
    sel.append(el("option", { value: "" }, "any"));
    for (const v of values) sel.append(el("option", { value: v }, v));
    const lab = el("label", {}, label + " ");
    lab.append(sel);
    return lab;
  }

  function sortValue(r, key) {
    if (key === "seed") return r.seedNum;
    if (key === "ending") return r.length;  // steps: a loop found early first
    if (key.startsWith("cluster")) {
      const c = r.clusters[Number(key.slice(7))];
      return c.length ? c[0] : Infinity;  // by the cluster it spends most steps in; none last
    }
    return r[key];
  }

  function compare(a, b) {
    const x = sortValue(a, table.key), y = sortValue(b, table.key);
    const d = typeof x === "string" ? x.localeCompare(y) : (x > y) - (x < y);
    return table.dir * d || a.run - b.run;
  }

  function applyTable() {
    const text = $("f-text").value.trim().toLowerCase();
    const want = (id) => $(id).value;
    const prompt = want("f-prompt"), network = want("f-network"), seed = want("f-seed"), reason = want("f-reason");
    const clusters = (DATA.clusterings || []).map((_, k) => $(`f-cluster${k}`).value.trim());
    let shown = 0;
    for (const r of table.rows) {
      const ok = (!text || [r.run, r.prompt, r.network, r.seed, r.ending, r.caption].join(" ").toLowerCase().includes(text)) &&
        (!prompt || r.prompt === prompt) && (!network || r.network === network) &&
        (!seed || r.seed === seed) && (!reason || r.reason === reason) &&
        clusters.every((c, k) => !c || r.clusters[k].includes(Number(c)));
      r.tr.hidden = !ok;
      shown += ok;
    }
    const sorted = [...table.rows].sort(compare);
    const body = table.rows[0].tr.parentElement;
    body.append(...sorted.map((r) => r.tr));
    for (const th of document.querySelectorAll("table.runs th")) th.removeAttribute("aria-sort");
    const active = document.querySelector(`table.runs button.sort[data-sort="${table.key}"]`);
    if (active) active.parentElement.setAttribute("aria-sort", table.dir > 0 ? "ascending" : "descending");
    $("f-sort").value = table.key;
    $("f-dir").textContent = table.dir > 0 ? "↑ ascending" : "↓ descending";
    $("f-count").textContent = `${shown} of ${table.rows.length} runs`;
  }

  function setupTable() {
    const body = document.querySelector("table.runs tbody");
    if (!body || !body.rows.length || !DATA.runs) return;
    table.rows = DATA.runs.map((r, i) => ({ ...r, tr: body.rows[i] }));
    const bar = $("filters");
    const search = el("input", { id: "f-text", type: "search", placeholder: "search prompts, captions, networks", "aria-label": "search" });
    bar.append(search,
      choice("f-prompt", "prompt", distinct(DATA.runs.map((r) => r.prompt))),
      choice("f-network", "network", distinct(DATA.runs.map((r) => r.network))),
      choice("f-seed", "seed", distinct(DATA.runs.map((r) => r.seed))),
      choice("f-reason", "stop reason", distinct(DATA.runs.map((r) => r.reason)).sort()));
    (DATA.clusterings || []).forEach((c, k) => {
      const lab = el("label", {}, `cluster (${c.model}) `);
      lab.append(el("input", { id: `f-cluster${k}`, type: "text", inputmode: "numeric", size: "4", placeholder: "id" }));
      bar.append(lab);
    });
    const sort = el("select", { id: "f-sort" });
    for (const b of document.querySelectorAll("table.runs button.sort")) sort.append(el("option", { value: b.dataset.sort }, b.textContent));
    const lab = el("label", {}, "sort by ");
    lab.append(sort);
    bar.append(lab, el("button", { id: "f-dir", type: "button" }), el("span", { id: "f-count", class: "note" }));
    bar.hidden = false;
    for (const c of bar.querySelectorAll("input, select")) {
      if (c !== sort) c.addEventListener("input", applyTable);
    }
    sort.addEventListener("input", () => { table.key = sort.value; applyTable(); });
    $("f-dir").addEventListener("click", () => { table.dir = -table.dir; applyTable(); });
    for (const b of document.querySelectorAll("table.runs button.sort")) {
      b.addEventListener("click", () => {
        table.dir = table.key === b.dataset.sort ? -table.dir : 1;
        table.key = b.dataset.sort;
        applyTable();
      });
    }
    // a click on a row (not on its links or buttons) opens its run in the viewer
    for (const r of table.rows) {
      if (!r.view) continue;
      r.tr.classList.add("viewable");
      r.tr.addEventListener("click", (e) => {
        if (e.target.closest("a, button, input, select")) return;
        if (location.hash === `#run-${r.run}`) followHash();
        else location.hash = `#run-${r.run}`;
      });
    }
    applyTable();
  }

  // ---------------------------------------------------------------- charts
  function setupCharts() {
    const box = $("lightbox");
    for (const img of document.querySelectorAll(".charts img")) {
      img.tabIndex = 0;
      img.title = "open larger";
      const open = () => {  // the image is made here: an empty <img> in the page would be an image that never loads
        const big = $("lightbox-image") || el("img", { id: "lightbox-image" });
        big.src = img.src;
        big.alt = img.alt;
        box.prepend(big);
        $("lightbox-caption").textContent = img.alt + " (a click closes it)";
        box.showModal();
      };
      img.addEventListener("click", open);
      img.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
    }
    box.addEventListener("click", () => box.close());  // anywhere, the picture too: it has nothing else to do
  }

  renderStatus(DATA.status);
  window.addEventListener("hashchange", followHash);
  // a printed page shows the galleries too
  window.addEventListener("beforeprint", () => { for (const d of document.querySelectorAll("details.gallery")) d.open = true; });
  setupTable();
  setupCharts();
  setupViewer();
  if (location.hash.startsWith("#cluster-")) followHash();
  if (DATA.live) poll();
})();
