// Panel 1, the recipe editor: a YAML textarea and the schema form kept in sync (YAML -> form through
// /api/validate's "data", form -> YAML through /api/yaml), validation as the user types (300 ms after the last
// key) with the CLI's positioned diagnostics, the dataset picker with a row preview and the trained span.

import { api } from "./api.js";
import { $, el, clear, debounce, setOptions, fmt } from "./dom.js";
import { RecipeForm } from "./form.js";

const STARTER = "# tkc compile THIS_FILE -o runs/NAME && tkc run runs/NAME\nschema_version: 1\nname: my_run\n" +
  "model: {path: assets/model}\ndata:\n  datasets:\n    train: {path: data/train.jsonl, format: alpaca}\n" +
  "stages:\n  - {kind: sft, name: sft, datasets: [train]}\nhardware: cpu\n";

export function setupEditor(board, schema, catalog) {
  const yaml = $("yaml");
  const ed = { path: "", seq: 0, data: null };
  const pickers = {
    family: catalog.families.map((f) => f.id),
    template: catalog.templates.map((t) => t.id),
    profile: catalog.profiles.map((p) => p.id),
  };
  const form = new RecipeForm($("form"), schema, pickers, debounce((data) => formToYaml(data), 300));
  board.editor = { path: () => ed.path, text: () => yaml.value };

  function setPath(path) {
    ed.path = path;
    $("current-path").textContent = path;
    board.state.currentRecipe = path;
    const sel = $("recipe-select");
    sel.value = [...sel.options].some((o) => o.value === path) ? path : "";
    fillDatalist();
  }

  // Suggestions for a dataset's path: relative to the recipe's folder, as the recipe writes it.
  function fillDatalist() {
    const dir = ed.path.includes("/") ? ed.path.slice(0, ed.path.lastIndexOf("/") + 1) : "";
    const rel = board.state.datasets.filter((d) => d.startsWith(dir)).map((d) => d.slice(dir.length));
    $("dataset-files").replaceChildren(...rel.map((d) => el("option", { value: d })));
  }

  function renderGutter(marks) {
    const gutter = $("yaml-gutter");
    const n = yaml.value.split("\n").length;
    clear(gutter);
    for (let i = 1; i <= n; i++) {
      const mark = marks && marks.get(i);
      gutter.append(el("div", { class: mark ? mark.cls : null, title: mark ? mark.title : null,
        "data-line": i, "data-testid": mark ? "error-line" : null }, String(i)));
    }
    gutter.scrollTop = yaml.scrollTop;
  }

  function selectLine(line) {
    const lines = yaml.value.split("\n");
    const start = lines.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0);
    yaml.focus();
    yaml.setSelectionRange(start, start + (lines[line - 1] || "").length);
    yaml.scrollTop = Math.max(0, (line - 5) * 18);
  }

  function sameFile(file) {
    if (!file) return true;
    return file === ed.path || ed.path.endsWith(`/${file}`) || file.endsWith(`/${ed.path}`) ||
      file.split("/").pop() === ed.path.split("/").pop();
  }

  function renderDiagnostics(list, target, statusNode, ok) {
    clear(target);
    const marks = new Map();
    for (const d of list) {
      const where = `${d.file || ed.path || "<recipe>"}${d.line ? `:${d.line}` : ""}${d.line && d.column ? `:${d.column}` : ""}`;
      const li = el("li", { class: d.severity === "warning" ? "warning" : "error", "data-testid": "diagnostic",
        "data-code": d.code, "data-line": d.line ?? "", "data-key": d.key ?? "" },
      el("span", { class: "diag-code" }, d.code), " ", el("span", { class: "diag-where" }, where), " ",
      d.key ? el("span", { class: "diag-key" }, d.key) : null, d.key ? ": " : "", d.message,
      d.hint ? el("span", { class: "diag-hint" }, `hint: ${d.hint}`) : null);
      if (d.line) li.addEventListener("click", () => selectLine(d.line));
      target.append(li);
      if (d.line && sameFile(d.file)) {
        const prev = marks.get(d.line);
        marks.set(d.line, { cls: d.severity === "warning" && !prev ? "warn" : "err",
          title: `${prev ? `${prev.title}\n` : ""}${d.code}: ${d.message}` });
      }
    }
    if (statusNode) {
      statusNode.textContent = ok ? (list.length ? `valid, ${list.length} warning(s)` : "valid") : `${list.length} problem(s)`;
      statusNode.className = ok ? "ok" : "bad";
      statusNode.dataset.state = ok ? "ok" : "error";
    }
    return marks;
  }
  board.renderDiagnostics = (list, target) => renderDiagnostics(list, target, null, true);

  async function validate(fromYaml) {
    const seq = ++ed.seq;
    $("validate-status").textContent = "checking...";
    $("validate-status").dataset.state = "checking";
    const res = await board.guard(() => api("POST", "/api/validate", undefined, { path: ed.path, text: yaml.value }));
    if (!res || seq !== ed.seq) return;
    renderGutter(renderDiagnostics(res.diagnostics || [], $("diagnostics"), $("validate-status"), res.ok));
    if (res.data && typeof res.data === "object") {
      ed.data = res.data;
      if (fromYaml && !$("form").contains(document.activeElement)) form.render(res.data);
      fillInspectDatasets(res.data);
    }
  }
  const validateSoon = debounce(() => validate(true), 300);

  async function formToYaml(data) {
    const res = await board.guard(() => api("POST", "/api/yaml", undefined, { data }));
    if (!res) return;
    yaml.value = res.text;
    renderGutter(null);
    await validate(false);
  }

  // Open a workspace recipe; with allowNew, a path not in the workspace yet starts a new file from STARTER.
  async function open(path, allowNew) {
    if (!path) return;
    if (allowNew && !board.state.recipes.includes(path)) await board.refreshFiles();
    if (allowNew && !board.state.recipes.includes(path)) {
      setPath(path);
      yaml.value = STARTER.replace("THIS_FILE", path);
      $("recipe-status").textContent = "new file (not saved yet)";
    } else {
      const res = await api("GET", "/api/recipe", { path });
      setPath(res.path || path);
      yaml.value = res.text;
      $("recipe-status").textContent = "";
    }
    form.render({});
    renderGutter(null);
    await validate(true);
  }

  async function save() {
    await api("PUT", "/api/recipe", undefined, { path: ed.path, text: yaml.value });
    $("recipe-status").textContent = `saved ${ed.path}`;
    await board.refreshFiles();
  }

  function fillInspectDatasets(data) {
    const names = Object.keys((data.data && data.data.datasets) || {});
    setOptions($("inspect-dataset"), names, $("inspect-dataset").value || undefined);
  }

  async function preview() {
    const path = $("dataset-file").value;
    if (!path) return;
    const res = await api("GET", "/api/dataset/preview", { path, n: 5 });
    const rows = res.rows || [];
    const cols = [...new Set(rows.flatMap((r) => (r && typeof r === "object" ? Object.keys(r) : ["value"])))];
    const table = el("table", { "data-testid": "dataset-rows" }, el("thead", {}, el("tr", {}, cols.map((c) => el("th", {}, c)))));
    const body = el("tbody");
    for (const r of rows) {
      const obj = r && typeof r === "object" ? r : { value: r };
      body.append(el("tr", {}, cols.map((c) => el("td", { class: "v" }, fmt(obj[c])))));
    }
    table.append(body);
    $("dataset-preview").replaceChildren(table);
    $("dataset-total").textContent = `${res.format || ""}${res.total != null ? `, ${res.total} rows` : ""}`;
  }

  async function inspect() {
    const res = await api("POST", "/api/dataset/inspect", undefined, { recipe_path: ed.path, text: yaml.value,
      dataset: $("inspect-dataset").value, row: Number($("inspect-row").value || 0) });
    const out = $("inspect-output");
    clear(out);
    const segments = res.segments && res.segments.length ? res.segments : [{ text: res.text || "", trained: false }];
    for (const s of segments) out.append(el("span", { class: s.trained ? "trained" : "masked" }, s.text));
  }

  yaml.addEventListener("input", () => { renderGutter(null); validateSoon(); });
  yaml.addEventListener("scroll", () => { $("yaml-gutter").scrollTop = yaml.scrollTop; });
  $("recipe-select").addEventListener("change", () => board.guard(() => open($("recipe-select").value, false)));
  $("recipe-open").addEventListener("click", () => board.guard(() => open($("recipe-path").value.trim(), true)));
  $("recipe-save").addEventListener("click", () => board.guard(save));
  $("dataset-preview-btn").addEventListener("click", () => board.guard(preview));
  $("dataset-file").addEventListener("change", () => board.guard(preview));
  $("inspect-btn").addEventListener("click", () => board.guard(inspect));

  board.onFiles((state) => {
    setOptions($("recipe-select"), state.recipes, ed.path || undefined, "(choose)");
    setOptions($("dataset-file"), state.datasets, $("dataset-file").value || undefined, "(choose)");
    fillDatalist();
  });

  const first = board.state.recipes.find((r) => !r.includes("base/")) || board.state.recipes[0];
  if (first) board.guard(() => open(first, false));
  else { setPath("recipe.yaml"); yaml.value = STARTER.replace("THIS_FILE", "recipe.yaml"); renderGutter(null); validate(true); }
}
