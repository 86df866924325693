// The loss chart: an inline SVG polyline over steps.jsonl rows (step on x, loss on y), redrawn on each poll.

const NS = "http://www.w3.org/2000/svg";
const W = 560, H = 220, PAD = { l: 56, r: 12, t: 12, b: 30 };

function svg(tag, attrs, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

export function drawLossChart(container, rows) {
  const pts = rows.filter((r) => typeof r.step === "number" && typeof r.loss === "number" && isFinite(r.loss));
  container.replaceChildren();
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img",
    "aria-label": "training loss by step", "data-testid": "loss-chart", "data-points": pts.length });
  container.append(root);
  root.append(svg("rect", { x: PAD.l, y: PAD.t, width: W - PAD.l - PAD.r, height: H - PAD.t - PAD.b,
    class: "plot" }));
  if (pts.length === 0) {
    root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "no steps yet"));
    return pts.length;
  }
  const xs = pts.map((p) => p.step), ys = pts.map((p) => p.loss);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
  const sx = (x) => PAD.l + ((x - x0) / (x1 - x0)) * (W - PAD.l - PAD.r);
  const sy = (y) => H - PAD.b - ((y - y0) / (y1 - y0)) * (H - PAD.t - PAD.b);
  root.append(svg("polyline", { class: "line", fill: "none",
    points: pts.map((p) => `${sx(p.step).toFixed(1)},${sy(p.loss).toFixed(1)}`).join(" ") }));
  for (const p of pts) {
    const dot = svg("circle", { cx: sx(p.step).toFixed(1), cy: sy(p.loss).toFixed(1), r: 2.5, class: "pt" });
    dot.append(svg("title", {}, `step ${p.step}: loss ${p.loss.toPrecision(5)}`));
    root.append(dot);
  }
  const label = (x, y, text, anchor) => root.append(svg("text", { x, y, "text-anchor": anchor, class: "axis" }, text));
  label(PAD.l - 6, PAD.t + 10, y1.toPrecision(4), "end");
  label(PAD.l - 6, H - PAD.b, y0.toPrecision(4), "end");
  label(PAD.l, H - 10, `step ${x0}`, "start");
  label(W - PAD.r, H - 10, `step ${x1}`, "end");
  return pts.length;
}
