// Tiny DOM helpers. Everything user- or server-supplied goes in through textContent or attributes, never
// innerHTML, so a recipe value like "<img onerror=...>" is shown as text.

export function $(id) {
  return document.getElementById(id);
}

// el("td", {class: "k", "data-key": key}, "text", childNode, ...)
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k in node && typeof v !== "string") node[k] = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  append(node, children);
  return node;
}

export function append(node, children) {
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

export function setOptions(select, values, current, blank) {
  clear(select);
  if (blank !== undefined) select.append(el("option", { value: "" }, blank));
  for (const v of values) {
    const [value, label] = Array.isArray(v) ? v : [v, v];
    select.append(el("option", { value }, label));
  }
  if (current !== undefined && current !== null && current !== "") {
    if (![...select.options].some((o) => o.value === String(current))) {
      select.append(el("option", { value: String(current) }, String(current)));
    }
    select.value = String(current);
  }
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

// 1154647552 under a key ending in _bytes -> "1.08 GiB".
export function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(2) : n} ${units[i]}`;
}

export function fmt(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toPrecision(5);
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}
