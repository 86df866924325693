// Panel 4, chat and export: stream a reply from a trained stage (the bundle's own chat template, rendered by the
// backend) through fetch + ReadableStream over server-sent events; export a stage's model.

import { api, streamSSE } from "./api.js";
import { $, el, clear, setOptions } from "./dom.js";

export function setupChat(board) {
  let messages = [];

  async function loadStages() {
    const path = $("chat-bundle").value;
    if (!path) return;
    const res = await api("GET", "/api/bundle", { path });
    const stages = (res.stages || []).map((s) => (typeof s === "string" ? { name: s } : s));
    const trained = stages.filter((s) => !s.kind || !["eval", "infer", "export"].includes(s.kind));
    const names = trained.map((s) => s.name);
    setOptions($("chat-stage"), names, names[names.length - 1]);
  }

  function bubble(role, text) {
    const body = el("span", { class: "text" }, text);
    const node = el("div", { class: `msg ${role}`, "data-testid": `chat-${role}` }, el("span", { class: "who" }, role), body);
    $("chat-log").append(node);
    return body;
  }

  async function send() {
    const text = $("chat-input").value;
    if (!text.trim()) return;
    const bundle = $("chat-bundle").value;
    if (!bundle) throw new Error("choose a bundle first");
    messages.push({ role: "user", content: text });
    bubble("user", text);
    $("chat-input").value = "";
    const out = bubble("assistant", "");
    const body = { bundle, messages, max_tokens: Number($("chat-max-tokens").value) || 32 };
    if ($("chat-stage").value) body.stage = $("chat-stage").value;
    $("chat-status").textContent = "generating...";
    $("chat-status").dataset.state = "streaming";
    $("chat-send").disabled = true;
    try {
      await streamSSE("/api/chat", body, (data) => {
        if (data.error) throw new Error(data.error.message || String(data.error));
        if (data.delta) out.append(data.delta);
      });
      messages.push({ role: "assistant", content: out.textContent });
      $("chat-status").textContent = "done";
      $("chat-status").dataset.state = "done";
    } catch (err) {
      messages.pop();
      $("chat-status").textContent = "failed";
      $("chat-status").dataset.state = "error";
      throw err;
    } finally {
      $("chat-send").disabled = false;
    }
  }

  async function exportModel() {
    const body = { bundle: $("chat-bundle").value };
    if ($("chat-stage").value) body.stage = $("chat-stage").value;
    if ($("export-out").value.trim()) body.out = $("export-out").value.trim();
    $("export-status").textContent = "exporting...";
    $("export-status").className = "";
    let res;
    try {
      res = await api("POST", "/api/export", undefined, body);
    } catch (err) {
      $("export-status").textContent = "export failed";
      $("export-status").className = "bad";
      throw err;
    }
    $("export-status").textContent = res.ok ? `exported to ${res.path}` : "export failed";
    $("export-status").className = res.ok ? "ok" : "bad";
  }

  $("chat-bundle").addEventListener("change", () => board.guard(loadStages));
  $("chat-send").addEventListener("click", () => board.guard(send));
  $("chat-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); board.guard(send); }
  });
  $("chat-clear").addEventListener("click", () => { messages = []; clear($("chat-log")); });
  $("export-btn").addEventListener("click", () => board.guard(exportModel));
  board.onFiles((state) => {
    const before = $("chat-bundle").value;
    board.fillBundleSelect($("chat-bundle"), state.selectedBundle);
    if ($("chat-bundle").value !== before) board.guard(loadStages);
  });
}
