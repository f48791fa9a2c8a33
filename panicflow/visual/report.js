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
    $("viewer-pos").textContent = `step ${f.step} · ${f.model} · image ${viewer.index + 1} / ${n}`;
    $("viewer-slider").max = String(n - 1);
    $("viewer-slider").value = String(viewer.index);
    $("viewer-prev").disabled = viewer.index === 0;
    $("viewer-next").disabled = viewer.index === n - 1;
  }

  async function openRun(run) {
    viewer.run = run;
    $("viewer-run").value = String(run);
    viewer.frames = await framesOf(run);
    show(0);
  }

  function step(delta) {
    if (viewer.frames.length) show(viewer.index + delta);
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
      if (e.key === "ArrowRight") { step(1); e.preventDefault(); }
      if (e.key === "ArrowLeft") { step(-1); e.preventDefault(); }
    });
    for (const b of document.querySelectorAll("button[data-run]")) {
      b.addEventListener("click", () => {
        openRun(Number(b.dataset.run));
        $("viewer").scrollIntoView({ behavior: "smooth" });
      });
    }
    openRun(Number(select.options[0].value));
  }

  renderStatus(DATA.status);
  setupViewer();
  if (DATA.live) poll();
})();
