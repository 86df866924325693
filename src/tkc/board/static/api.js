// The board's JSON API client: every call same-origin, every state-changing one with X-TKC-Board: 1 (the
// backend refuses POST/PUT/DELETE without it: a cross-site form cannot send a custom header).

export class ApiError extends Error {
  constructor(status, error) {
    super((error && error.message) || `HTTP ${status}`);
    this.status = status;
    this.code = (error && error.code) || "";
    this.detail = error || {};
  }
}

function headersFor(method, hasBody) {
  const h = { Accept: "application/json" };
  if (method !== "GET" && method !== "HEAD") h["X-TKC-Board"] = "1";
  if (hasBody) h["Content-Type"] = "application/json";
  return h;
}

// api("GET", "/api/files", {kind: "recipes"}) or api("POST", "/api/validate", null, {path, text})
export async function api(method, path, query, body) {
  const url = new URL(path, window.location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null) url.searchParams.set(k, String(v));
  }
  const init = { method, headers: headersFor(method, body !== undefined), credentials: "same-origin" };
  if (body !== undefined) init.body = JSON.stringify(body);
  const resp = await fetch(url, init);
  let data = null;
  try {
    data = await resp.json();
  } catch (_) {
    data = null;
  }
  if (!resp.ok) throw new ApiError(resp.status, data && data.error);
  return data;
}

// POST a JSON body and read a text/event-stream reply line by line: onData(parsed JSON) for each
// `data: {...}` line, until `data: [DONE]` or the end of the stream.
export async function streamSSE(path, body, onData) {
  const resp = await fetch(new URL(path, window.location.origin), {
    method: "POST", headers: headersFor("POST", true), credentials: "same-origin", body: JSON.stringify(body),
  });
  if (!resp.ok) {
    let data = null;
    try { data = await resp.json(); } catch (_) { data = null; }
    throw new ApiError(resp.status, data && data.error);
  }
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, "");
      buf = buf.slice(nl + 1);
      if (!line.startsWith("data:")) continue;
      const payload = line.slice(5).trim();
      if (payload === "[DONE]") return;
      if (payload) onData(JSON.parse(payload));
    }
  }
}
