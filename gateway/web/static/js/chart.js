// A small latency history chart, drawn as SVG by the page itself (no chart library, no
// CDN: the page must work with the uplink down).
//
// p50 is the solid line, p95 the faint one; a cycle where the hotspot was down is a red
// bar along the bottom, so an outage stays visible even when no latency was measured.

import { svg } from "./dom.js";
import { HISTORY_POINTS } from "./store.js";
import { t } from "./i18n.js";

const W = 300;
const H = 64;
const PAD = 4;

function path(points, key, xOf, yOf) {
  let d = "";
  let pen = false;
  points.forEach((point, index) => {
    const value = point[key];
    if (value === null || value === undefined) {
      pen = false;
      return;
    }
    d += `${pen ? "L" : "M"}${xOf(index).toFixed(1)},${yOf(value).toFixed(1)}`;
    pen = true;
  });
  return d;
}

/** An <svg> for ``points`` ([{p50, p95, state}]), scaled to the largest p95. */
export function historyChart(points, label) {
  const max = Math.max(1, ...points.map((p) => p.p95 ?? p.p50 ?? 0));
  const step = (W - 2 * PAD) / Math.max(1, HISTORY_POINTS - 1);
  const offset = HISTORY_POINTS - points.length;
  const xOf = (index) => PAD + (index + offset) * step;
  const yOf = (value) => H - PAD - 6 - (value / max) * (H - 2 * PAD - 8);
  const chart = svg("svg", {
    class: "chart",
    viewBox: `0 0 ${W} ${H}`,
    role: "img",
    "aria-label": label,
  });
  chart.append(svg("title", { text: label }));
  chart.append(svg("line", { class: "chart-axis", x1: 0, y1: H - PAD, x2: W, y2: H - PAD }));
  points.forEach((point, index) => {
    if (point.state === "down" || point.state === "degraded") {
      chart.append(
        svg("rect", {
          class: `chart-${point.state}`,
          x: (xOf(index) - step / 2).toFixed(1),
          y: H - PAD - 4,
          width: Math.max(2, step).toFixed(1),
          height: 4,
        }),
      );
    }
  });
  const p95 = path(points, "p95", xOf, yOf);
  if (p95) chart.append(svg("path", { class: "chart-p95", d: p95 }));
  const p50 = path(points, "p50", xOf, yOf);
  if (p50) chart.append(svg("path", { class: "chart-p50", d: p50 }));
  chart.append(
    svg("text", { class: "chart-max", x: W - PAD, y: PAD + 8, "text-anchor": "end" }, t("unit.ms", { v: Math.round(max) })),
  );
  return chart;
}
