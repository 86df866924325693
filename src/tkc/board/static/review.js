// Panel 2, compile and review: compile the editor's recipe, then show a bundle: its hash, resolved values grouped
// by section with their provenance, the estimate, the launch scripts; and its diff against another bundle.

import { api } from "./api.js";
import { $, el, clear, fmt, fmtBytes, setOptions } from "./dom.js";

function flatten(obj, prefix, out) {
  for (const [k, v] of Object.entries(obj || {})) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, key, out);
    else out.push([key, v]);
  }
  return out;
}

export function setupReview(board) {
  async function compile() {
    const out = $("compile-out").value.trim();
    const body = { path: board.editor.path(), text: board.editor.text(), force: $("compile-force").checked };
    if (out) body.out = out;
    $("compile-status").textContent = "compiling...";
    $("compile-status").dataset.state = "compiling";
    let res;
    try {
      res = await api("POST", "/api/compile", undefined, body);
    } catch (err) {
      $("compile-status").textContent = "failed";
      $("compile-status").dataset.state = "error";
      if (err.detail && Array.isArray(err.detail.diagnostics)) board.renderDiagnostics(err.detail.diagnostics, $("compile-diagnostics"));
      throw err;
    }
    board.renderDiagnostics(res.diagnostics || [], $("compile-diagnostics"));
    $("compile-status").textContent = res.ok ? `compiled ${res.bundle}` : "compile failed: see the diagnostics";
    $("compile-status").className = res.ok ? "ok" : "bad";
    $("compile-status").dataset.state = res.ok ? "ok" : "error";
    if (!res.ok) return;
    board.state.selectedBundle = res.bundle;
    await board.refreshFiles();
    await show(res.bundle);
  }

  async function show(path) {
    if (!path) return;
    const res = await api("GET", "/api/bundle", { path });
    board.state.selectedBundle = path;
    $("bundle-select").value = path;
    $("bundle-hash").textContent = res.hash;
    $("bundle-verified").textContent = res.verified ? "verified" : "NOT verified";
    $("bundle-verified").className = res.verified ? "ok" : "bad";
    renderStages(res.stages || []);
    renderEstimate(res.estimate);
    renderSections(res.sections || {});
    renderScripts(res.scripts || {});
  }

  function renderStages(stages) {
    const names = stages.map((s) => (typeof s === "string" ? s : `${s.name}${s.kind ? ` (${s.kind})` : ""}`));
    $("bundle-stages").replaceChildren(el("h3", {}, "Stages"), el("p", {}, names.join(" \u2192 ")));
  }

  function renderEstimate(estimate) {
    const box = clear($("bundle-estimate"));
    if (!estimate) return;
    const rows = flatten(estimate, "", []).map(([k, v]) => el("tr", {}, el("td", { class: "k" }, k), el("td", { class: "v" }, k.endsWith("_bytes") && typeof v === "number" ? fmtBytes(v) : fmt(v))));
    box.append(el("h3", {}, "Estimate"), el("table", { class: "compact" }, el("tbody", {}, rows)));
  }

  function renderSections(sections) {
    const box = clear($("bundle-sections"));
    box.append(el("h3", {}, "Resolved values (with where each came from)"));
    for (const [name, rows] of Object.entries(sections)) {
      const body = el("tbody", {}, rows.map((r) => el("tr", { "data-key": r.key, "data-testid": "resolved-row" },
        el("td", { class: "k" }, r.key), el("td", { class: "v" }, fmt(r.value)),
        el("td", { class: "src", "data-testid": "provenance" }, r.source || ""))));
      box.append(el("details", { open: name === Object.keys(sections)[0], "data-section": name },
        el("summary", {}, `${name} (${rows.length})`),
        el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "key"), el("th", {}, "value"), el("th", {}, "source"))), body)));
    }
  }

  function renderScripts(scripts) {
    const box = clear($("bundle-scripts"));
    if (!Object.keys(scripts).length) return;
    box.append(el("h3", {}, "Launch scripts"));
    for (const [name, text] of Object.entries(scripts)) {
      box.append(el("details", {}, el("summary", {}, name), el("pre", { "data-script": name }, text)));
    }
  }

  async function diff() {
    const a = $("bundle-select").value, b = $("diff-other").value;
    if (!a || !b) return;
    const res = await api("GET", "/api/diff", { a, b });
    $("diff-text").textContent = res.text || "(no differences)";
    const rows = (res.changes || []).map((c) => el("tr", { "data-key": c.key }, el("td", { class: "k" }, c.key),
      el("td", { class: "v" }, fmt(c.a)), el("td", { class: "src" }, c.source_a || ""),
      el("td", { class: "v" }, fmt(c.b)), el("td", { class: "src" }, c.source_b || "")));
    $("diff-changes").replaceChildren(rows.length ? el("table", {}, el("thead", {}, el("tr", {},
      ["key", a, "source", b, "source"].map((h) => el("th", {}, h)))), el("tbody", {}, rows)) : "");
  }

  $("compile-btn").addEventListener("click", () => board.guard(compile));
  $("bundle-load").addEventListener("click", () => board.guard(() => show($("bundle-select").value)));
  $("bundle-select").addEventListener("change", () => board.guard(() => show($("bundle-select").value)));
  $("diff-btn").addEventListener("click", () => board.guard(diff));
  board.onFiles((state) => {
    board.fillBundleSelect($("bundle-select"), state.selectedBundle);
    const others = state.bundles.filter((b) => b !== $("bundle-select").value);
    setOptions($("diff-other"), others, $("diff-other").value || undefined);
  });
  board.onTab((name) => {
    if (name === "bundle" && !$("compile-out").value && board.editor) {
      const stem = board.editor.path().split("/").pop().replace(/\.ya?ml$/, "");
      $("compile-out").placeholder = `runs/${stem}`;
    }
  });
}
