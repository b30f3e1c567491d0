// Charts as inline SVG, no library: bars (one value per label), lines over time, and a legend.
// Colours come from CSS classes (s1…s6), so dark mode follows the stylesheet.
import { h } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";
const W = 400;
const H = 220;
const PAD = { l: 46, r: 8, t: 10, b: 30 };

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function nice(max) {
  if (!(max > 0)) return 1;
  const step = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= max) return m * step;
  return 10 * step;
}

function short(value) {
  if (Math.abs(value) >= 1e6) return `${(value / 1e6).toFixed(1)}M`;
  if (Math.abs(value) >= 1e3) return `${(value / 1e3).toFixed(1)}k`;
  return Number.isInteger(value) ? String(value) : value.toFixed(2);
}

function frame(svg, top, unit) {
  const inner = H - PAD.t - PAD.b;
  for (let i = 0; i <= 4; i += 1) {
    const y = PAD.t + inner - (inner * i) / 4;
    svg.append(s("line", { class: "axis", x1: PAD.l, x2: W - PAD.r, y1: y, y2: y }));
    svg.append(s("text", { x: PAD.l - 6, y: y + 4, "text-anchor": "end" }, `${short((top * i) / 4)}${unit}`));
  }
}

function svgRoot(label) {
  return s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label }, s("title", {}, label));
}

export function legend(names) {
  return h("div", { class: "legend" }, names.map((n, i) => h("span", {}, h("i", { class: `sw${(i % 6) + 1}` }), n ?? "(none)")));
}

// bars: [{label, value, series?}] with one or more series per label (grouped side by side)
export function bars(label, rows, { series = ["value"], unit = "" } = {}) {
  const svg = svgRoot(label);
  const values = rows.flatMap((r) => series.map((k) => Number(r[k]) || 0));
  const top = nice(Math.max(0, ...values));
  frame(svg, top, unit);
  const inner = H - PAD.t - PAD.b;
  const slot = (W - PAD.l - PAD.r) / Math.max(rows.length, 1);
  const bar = Math.max(2, (slot * 0.8) / series.length);
  rows.forEach((r, i) => {
    series.forEach((k, j) => {
      const v = Number(r[k]) || 0;
      const height = (inner * v) / top;
      const x = PAD.l + i * slot + slot * 0.1 + j * bar;
      svg.append(s("rect", { class: `s${(j % 6) + 1} bar`, x, y: PAD.t + inner - height, width: bar - 1, height: Math.max(height, 0) },
        s("title", {}, `${r.label ?? "(none)"} ${k}: ${short(v)}${unit}`)));
    });
    const text = String(r.label ?? "(none)");
    svg.append(s("text", { x: PAD.l + i * slot + slot / 2, y: H - PAD.b + 14, "text-anchor": "middle" }, text.length > 14 ? `${text.slice(0, 13)}…` : text));
  });
  return svg;
}

// lines: series [{name, points: [[timeMs, value|null], …]}] over a shared time axis
export function lines(label, seriesList, { unit = "" } = {}) {
  const svg = svgRoot(label);
  const all = seriesList.flatMap((x) => x.points).filter((p) => p[1] !== null && p[1] !== undefined);
  const top = nice(Math.max(0, ...all.map((p) => p[1])));
  frame(svg, top, unit);
  const times = all.map((p) => p[0]);
  const t0 = Math.min(...times);
  const t1 = Math.max(...times);
  const span = t1 - t0 || 1;
  const inner = H - PAD.t - PAD.b;
  const x = (t) => (all.length && t1 === t0 ? (W + PAD.l - PAD.r) / 2 : PAD.l + ((W - PAD.l - PAD.r) * (t - t0)) / span);
  const y = (v) => PAD.t + inner - (inner * v) / top;
  seriesList.forEach((series, i) => {
    const pts = series.points.filter((p) => p[1] !== null && p[1] !== undefined);
    if (pts.length > 1) svg.append(s("polyline", { class: `line s${(i % 6) + 1}`, fill: "none", points: pts.map((p) => `${x(p[0])},${y(p[1])}`).join(" ") }));
    for (const p of pts) svg.append(s("circle", { class: `s${(i % 6) + 1} point`, cx: x(p[0]), cy: y(p[1]), r: 3 }, s("title", {}, `${series.name}: ${short(p[1])}${unit}`)));
  });
  if (all.length) {
    for (const t of [t0, t1]) {
      svg.append(s("text", { x: x(t), y: H - PAD.b + 14, "text-anchor": t === t0 ? "start" : "end" }, new Date(t).toISOString().slice(5, 16).replace("T", " ")));
    }
  }
  return svg;
}
