// Panel 3, runs: start a compiled bundle, stop (SIGTERM: the run checkpoints) and resume it; while the selected
// run is running, poll once a second for its status and progress, the new part of its log and its steps.jsonl
// (the loss chart).

import { api } from "./api.js";
import { $, el, fmt } from "./dom.js";
import { drawLossChart } from "./chart.js";

const LOG_KEEP = 200000; // characters of log kept on the page (the whole log stays on disk)

export function setupRuns(board) {
  const rs = { id: null, offset: 0, timer: null, run: null };

  function select(id) {
    if (rs.id !== id) { rs.offset = 0; $("run-log").textContent = ""; }
    rs.id = id;
    $("run-id").textContent = id || "";
    schedule(0);
  }

  function schedule(ms) {
    clearTimeout(rs.timer);
    rs.timer = setTimeout(() => board.guard(poll), ms);
  }

  async function poll() {
    if (!rs.id) return;
    const run = await api("GET", `/api/runs/${encodeURIComponent(rs.id)}`);
    rs.run = run;
    showStatus(run);
    const log = await api("GET", `/api/runs/${encodeURIComponent(rs.id)}/log`, { offset: rs.offset });
    if (log.text) {
      const pre = $("run-log");
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.append(log.text);
      if (pre.textContent.length > LOG_KEEP) pre.textContent = pre.textContent.slice(-LOG_KEEP);
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    }
    rs.offset = log.offset;
    const stage = (run.progress && run.progress.stage) || run.stage;
    const steps = await api("GET", `/api/runs/${encodeURIComponent(rs.id)}/steps`, stage ? { stage } : {});
    $("chart-stage").textContent = steps.stage ? `(stage ${steps.stage})` : "";
    drawLossChart($("loss-chart"), steps.steps || []);
    await refreshList();
    if (run.status === "running") schedule(1000);
  }

  function showStatus(run) {
    $("run-status").textContent = run.status;
    $("run-status").className = `status-${run.status}`;
    const p = run.progress || {};
    const step = p.step ?? 0, total = p.total_steps ?? 0;
    $("run-progress").textContent = p.stage ? `stage ${p.stage}: step ${step}${total ? `/${total}` : ""}` : "";
    $("run-progress-bar").value = total ? step / total : 0;
    $("run-stop").disabled = run.status !== "running";
    $("run-resume").disabled = run.status === "running" || run.status === "finished";
  }

  async function refreshList() {
    const res = await api("GET", "/api/runs");
    const running = (res.runs || []).find((r) => r.status === "running");
    if (!rs.id && running) select(running.id); // opening the page while a run goes on follows it
    const body = $("runs-table").tBodies[0];
    body.replaceChildren(...(res.runs || []).map((r) => {
      const metrics = Object.entries(r.metrics || {}).map(([k, v]) => (v && typeof v === "object"
        ? `${k}: ${Object.entries(v).filter(([, x]) => x !== null).map(([mk, x]) => `${mk}=${fmt(x)}`).join(" ")}`
        : `${k}=${fmt(v)}`)).join("; ");
      const tr = el("tr", { "data-run": r.id, "data-status": r.status, class: r.id === rs.id ? "selected" : null },
        el("td", {}, el("code", {}, r.id)), el("td", {}, r.bundle), el("td", { class: "v" }, (r.hash || "").slice(0, 12)),
        el("td", {}, r.stage || ""), el("td", { class: `status-${r.status}` }, r.status),
        el("td", {}, r.returncode ?? ""), el("td", {}, r.started || ""), el("td", { class: "v" }, metrics));
      tr.addEventListener("click", () => select(r.id));
      return tr;
    }));
  }

  async function start() {
    const bundle = $("run-bundle").value;
    if (!bundle) throw new Error("choose a compiled bundle first");
    const res = await api("POST", "/api/runs", undefined, { bundle });
    select(res.id);
  }

  async function stop() {
    if (!rs.id) return;
    await api("POST", `/api/runs/${encodeURIComponent(rs.id)}/stop`);
    schedule(0);
  }

  async function resume() {
    if (!rs.id) return;
    const res = await api("POST", `/api/runs/${encodeURIComponent(rs.id)}/resume`);
    select((res && res.id) || rs.id);
  }

  $("run-start").addEventListener("click", () => board.guard(start));
  $("run-stop").addEventListener("click", () => board.guard(stop));
  $("run-resume").addEventListener("click", () => board.guard(resume));
  board.onFiles((state) => board.fillBundleSelect($("run-bundle"), state.selectedBundle));
  board.onTab((name) => { if (name === "runs") board.guard(refreshList); });
  drawLossChart($("loss-chart"), []);
}
