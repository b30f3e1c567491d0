// Analytics: requests, latency p50/p95 and TTFT over time, tokens and cost by model or provider, error rate
// by cause, top prompts, feedback by model, A/B experiments (experiments.js); a time range picker. Charts are inline SVG (charts.js).
import { get, query } from "./api.js";
import { bars, legend, lines } from "./charts.js";
import { clear, fmt, h, money } from "./dom.js";
import { panel as experiments } from "./experiments.js";

const RANGES = [["1h", "last hour", "minute"], ["24h", "last 24 h", "hour"], ["7d", "last 7 days", "day"], ["30d", "last 30 days", "day"]];

function card(title, ...body) {
  return h("section", { class: "panel stack chart-card", "aria-label": title }, h("h2", {}, title), ...body);
}

function empty(text = "No data in this range.") {
  return h("p", { class: "muted empty" }, text);
}

export async function render(main) {
  const range = h("select", { id: "a-range", "aria-label": "Time range" }, RANGES.map(([v, t]) => h("option", { value: v }, t)));
  const by = h("select", { id: "a-by", "aria-label": "Group by" }, ["model", "provider"].map((v) => h("option", { value: v }, `by ${v}`)));
  const body = h("div", { id: "analytics" });
  range.value = "24h";

  async function draw() {
    const [, , bucket] = RANGES.find((r) => r[0] === range.value);
    const f = { since: range.value };
    const group = by.value;
    const [summary, volume, latency, perModel, tokens, errs, prompts, feedback, status, cache] = await Promise.all([
      get(`/admin/analytics/summary${query(f)}`),
      get(`/admin/analytics/volume${query({ ...f, bucket, by: group })}`),
      get(`/admin/analytics/latency${query({ ...f, bucket, by: "none" })}`),
      get(`/admin/analytics/latency${query({ ...f, by: group })}`),
      get(`/admin/analytics/tokens${query({ ...f, by: group })}`),
      get(`/admin/analytics/errors${query({ ...f, by: group })}`),
      get(`/admin/analytics/prompts${query({ ...f, limit: 10 })}`),
      get(`/admin/analytics/feedback${query(f)}`).catch(() => []),
      get("/admin/history/status"),
      get(`/admin/analytics/cache${query({ ...f, by: group })}`).catch(() => []),
    ]);
    const time = (iso) => Date.parse(iso);
    const groups = [...new Set(volume.map((r) => r.group))];
    const volumeSeries = groups.map((g) => ({ name: g ?? "(none)", points: volume.filter((r) => r.group === g).map((r) => [time(r.bucket), r.requests]) }));
    const cards = [
      card("Requests over time", volume.length ? [lines("Requests per bucket", volumeSeries), legend(groups)] : empty()),
      card("Latency p50 / p95 over time", latency.length ? [lines("Latency", [
        { name: "p50", points: latency.map((r) => [time(r.bucket), r.p50_ms]) },
        { name: "p95", points: latency.map((r) => [time(r.bucket), r.p95_ms]) },
        { name: "TTFT p50", points: latency.map((r) => [time(r.bucket), r.ttft_p50_ms]) }], { unit: "ms" }), legend(["p50", "p95", "TTFT p50"])] : empty()),
      card("Time to first token (streams)", perModel.some((r) => r.ttft_p50_ms !== null)
        ? [bars("TTFT by group", perModel.map((r) => ({ label: r.group, p50: r.ttft_p50_ms, p95: r.ttft_p95_ms })), { series: ["p50", "p95"], unit: "ms" }), legend(["p50", "p95"])]
        : empty("No streamed requests in this range.")),
      card(`Tokens by ${group}`, tokens.length ? [bars("Tokens", tokens.map((r) => ({ label: r.group, prompt: r.prompt_tokens, completion: r.completion_tokens })), { series: ["prompt", "completion"] }), legend(["prompt", "completion"])] : empty()),
      card(`Cost by ${group}`, tokens.some((r) => r.cost !== null)
        ? bars("Cost", tokens.map((r) => ({ label: r.group, value: r.cost || 0 })), { unit: "$" })
        : empty("No priced requests (set pricing in providers.yaml).")),
      card("Error rate", errs.groups.length ? [bars(`Error rate by ${group}`, errs.groups.map((r) => ({ label: r.group, value: (r.error_rate || 0) * 100 })), { unit: "%" }),
        errs.types.length ? h("table", {}, h("thead", {}, h("tr", {}, ["cause", "outcome", "count", "share"].map((t) => h("th", { scope: "col" }, t)))),
          h("tbody", {}, errs.types.map((t) => h("tr", {}, h("td", {}, t.error_type ?? "–"), h("td", {}, t.outcome), h("td", {}, t.count), h("td", {}, fmt((t.rate || 0) * 100, 1, "%"))))))
          : h("p", { class: "muted" }, "No errors.")] : empty()),
      card("Feedback by model", feedback.length ? [bars("Votes", feedback.map((r) => ({ label: r.model, up: r.thumbs_up, down: r.thumbs_down, preferred: r.preferred })), { series: ["up", "down", "preferred"] }),
        legend(["thumbs up", "thumbs down", "preferred"]),
        h("p", { class: "muted" }, feedback.map((r) => `${r.model}: mean score ${fmt(r.mean_score, 2)} (${r.scored} scored)`).join(" · "))] : empty("No feedback yet.")),
      card("Cache hit rate", cache.some((r) => r.cache_hits > 0)
        ? bars(`Cache hit rate by ${group}`, cache.map((r) => ({ label: r.group, value: (r.hit_rate || 0) * 100 })), { unit: "%" })
        : empty("No cache hits in this range.")),
      card("Top prompts", status.capture !== "full" ? h("p", { class: "note" }, `Content capture is "${status.capture}": prompts are not stored.`)
        : prompts.length ? h("ol", { id: "top-prompts" }, prompts.map((p) => h("li", {}, `${p.prompt} — ${p.count}× on ${p.models} model(s)`))) : empty()),
    ];
    clear(body,
      h("div", { class: "stats panel", id: "summary" },
        h("span", {}, "requests ", h("b", { id: "sum-requests" }, summary.requests)),
        h("span", {}, "error rate ", h("b", {}, fmt((summary.error_rate || 0) * 100, 1, "%"))),
        h("span", {}, "p50 ", h("b", {}, fmt(summary.latency && summary.latency.p50_ms, 0, " ms"))),
        h("span", {}, "p95 ", h("b", {}, fmt(summary.latency && summary.latency.p95_ms, 0, " ms"))),
        h("span", {}, "tokens ", h("b", {}, summary.tokens ? summary.tokens.total_tokens : 0)),
        h("span", {}, "cost ", h("b", { id: "sum-cost" }, money(summary.tokens && summary.tokens.cost)))),
      h("div", { class: "cols" }, cards),
      await experiments());
  }

  range.addEventListener("change", draw);
  by.addEventListener("change", draw);
  clear(main, h("h1", {}, "Analytics"), h("div", { class: "row" }, range, by), body);
  await draw();
}
