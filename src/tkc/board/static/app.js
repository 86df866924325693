// tkc board front end: boots the page (token prompt when the board asks for one), the tabs, and the state the
// four panels share (workspace files, the current recipe, the selected bundle).

import { api, ApiError } from "./api.js";
import { $, setOptions } from "./dom.js";
import { setupEditor } from "./editor.js";
import { setupReview } from "./review.js";
import { setupRuns } from "./runs.js";
import { setupChat } from "./chat.js";

const board = {
  state: { bundles: [], recipes: [], datasets: [] },
  listeners: { bundles: [], tab: [] },

  showError(err) {
    const bar = $("error-bar");
    if (!err) { bar.hidden = true; bar.textContent = ""; return; }
    const msg = err instanceof ApiError ? `${err.message}${err.code ? ` [${err.code}]` : ""}` : String(err.message || err);
    bar.textContent = msg;
    bar.hidden = false;
  },

  // Run an async UI action, showing its error (if any) in the error bar.
  async guard(fn) {
    try {
      board.showError(null);
      return await fn();
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) login();
      board.showError(err);
      return undefined;
    }
  },

  async refreshFiles() {
    const [recipes, datasets, bundles] = await Promise.all(
      ["recipes", "datasets", "bundles"].map((kind) => api("GET", "/api/files", { kind })));
    board.state.recipes = recipes.files;
    board.state.datasets = datasets.files;
    board.state.bundles = bundles.files;
    for (const fn of board.listeners.bundles) fn(board.state);
  },

  onFiles(fn) { board.listeners.bundles.push(fn); },
  onTab(fn) { board.listeners.tab.push(fn); },

  fillBundleSelect(select, preferred) {
    const current = preferred || select.value;
    setOptions(select, board.state.bundles, board.state.bundles.includes(current) ? current : undefined);
  },

  showTab(name) {
    for (const b of document.querySelectorAll("#tabs button")) {
      b.setAttribute("aria-selected", String(b.dataset.tab === name));
    }
    for (const p of document.querySelectorAll("main > section")) p.hidden = p.dataset.panel !== name;
    for (const fn of board.listeners.tab) fn(name);
  },
};

function login() {
  const dialog = $("login-dialog");
  if (!dialog.open) dialog.showModal();
}

async function submitLogin(event) {
  event.preventDefault();
  try {
    await api("POST", "/api/login", undefined, { token: $("login-token").value });
    $("login-dialog").close();
    $("login-error").textContent = "";
    await start();
  } catch (err) {
    $("login-error").textContent = err.message;
  }
}

let started = false;

async function start() {
  const [schema, catalog] = await Promise.all([api("GET", "/api/schema"), api("GET", "/api/catalog")]);
  await board.refreshFiles();
  if (started) return;
  started = true;
  setupEditor(board, schema, catalog);
  setupReview(board);
  setupRuns(board);
  setupChat(board);
  for (const fn of board.listeners.bundles) fn(board.state);
  document.body.dataset.ready = "1";
}

async function boot() {
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => board.showTab(b.dataset.tab));
  $("login-form").addEventListener("submit", submitLogin);
  const info = await api("GET", "/api/info");
  $("workspace-name").textContent = info.workspace;
  $("version").textContent = `tkc ${info.version}`;
  try {
    await start();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401 && info.token_required) login();
    else board.showError(err);
  }
}

boot().catch((err) => board.showError(err));
