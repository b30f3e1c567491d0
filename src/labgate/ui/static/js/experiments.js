// Experiments (Analytics): each A/B experiment of experiments.yaml with its traffic per variant; the chosen
// one's metrics per variant, its comparisons with always-valid confidence sequences, and the verdict
// (GET /admin/experiments, /admin/experiments/{name}/analysis; docs/experiments.md).
import { get } from "./api.js";
import { clear, fmt, h, money } from "./dom.js";

const pct = (v, digits = 1) => fmt(v === null || v === undefined ? null : v * 100, digits, "%");

function signed(value, kind) {
  if (value === null || value === undefined) return "∞";
  const n = value * 100;
  return `${n >= 0 ? "+" : "−"}${Math.abs(n).toFixed(kind === "proportion" ? 1 : 0)}${kind === "proportion" ? " pt" : "%"}`;
}

function table(caption, columns, rows) {
  return h("table", { "aria-label": caption },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((cell) => h("td", {}, cell))))));
}

function report(r) {
  const variants = table("Variants", ["variant", "requests", "errors", "p50", "p95", "TTFT p50", "tok/s", "cost/req", "score", "thumbs up"],
    r.variants.map((v) => [v.variant + (v.variant === r.control ? " (control)" : ""), v.requests, pct(v.error_rate),
      fmt(v.latency_p50_ms, 0, " ms"), fmt(v.latency_p95_ms, 0, " ms"), fmt(v.ttft_p50_ms, 0, " ms"),
      fmt(v.tokens_per_second, 1), money(v.cost_per_request), fmt(v.mean_score, 2), pct(v.thumbs_up_rate)]));
  const shown = r.comparisons.filter((c) => r.metrics.includes(c.metric));
  const comparisons = table("Comparisons", ["metric", "variant", "difference", `${Math.round((1 - r.alpha) * 100)}% CS (always valid)`, "p (always valid)", "p (fixed horizon)", "power", "decided"],
    shown.map((c) => [c.metric, c.variant, signed(c.difference, c.kind),
      `${signed(c.confidence_sequence[0], c.kind)} … ${signed(c.confidence_sequence[1], c.kind)}`,
      fmt(c.p_always_valid, 4), fmt(c.p_fixed, 4), pct(c.power, 0), c.decided ? "yes" : "not yet"]));
  const t = r.thompson;
  return [
    h("p", { id: "x-verdict", class: "verdict" }, h("b", {}, "Verdict: "), r.verdict),
    variants, comparisons,
    h("ul", { class: "muted", id: "x-notes" }, shown.map((c) => h("li", {}, c.verdict))),
    t.ready ? h("p", { class: "muted" }, `P(best) on ${t.metric}: ` + Object.entries(t.p_best).map(([k, v]) => `${k} ${pct(v)}`).join(", ")
      + (t.stop ? " — stopping rule met" : "")) : null,
    r.truncated ? h("p", { class: "note" }, "Only the newest records were analysed.") : null,
  ];
}

export async function panel() {
  const section = h("section", { class: "panel stack", id: "experiments", "aria-label": "Experiments" }, h("h2", {}, "Experiments"));
  let list;
  try {
    list = (await get("/admin/experiments")).data;
  } catch (err) {
    section.append(h("p", { class: "muted empty" }, `Experiments unavailable: ${err.message}`));
    return section;
  }
  if (!list.length) {
    section.append(h("p", { class: "muted empty" }, "No experiments in experiments.yaml (docs/experiments.md)."));
    return section;
  }
  const pick = h("select", { id: "x-pick", "aria-label": "Experiment" },
    list.map((e) => h("option", { value: e.name }, `${e.name} — ${e.status}${e.taking_traffic ? "" : " (no traffic now)"}`)));
  const traffic = h("p", { class: "muted", id: "x-traffic" });
  const out = h("div", { id: "x-report", class: "stack" });
  async function show() {
    const chosen = list.find((e) => e.name === pick.value);
    traffic.textContent = chosen.variants.map((v) => `${v.name}: weight ${v.weight}, ${chosen.requests[v.name] || 0} requests`).join(" · ");
    clear(out, h("p", { class: "muted" }, "Analysing…"));
    try {
      clear(out, report(await get(`/admin/experiments/${encodeURIComponent(pick.value)}/analysis`)));
    } catch (err) {
      clear(out, h("p", { class: "note" }, `Analysis unavailable: ${err.message}`));
    }
  }
  pick.addEventListener("change", show);
  section.append(h("div", { class: "row" }, pick), traffic, out);
  await show();
  return section;
}
