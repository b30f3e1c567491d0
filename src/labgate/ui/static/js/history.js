// History: search and filter records, open one (request, response, attempts, timings, feedback), replay it
// on the same or another model, export the filtered set as CSV or JSON.
import { get, query, request } from "./api.js";
import { clear, copy, download, fmt, h, money, toast } from "./dom.js";
import { go } from "./nav.js";
import { models } from "./stream.js";

const PAGE = 50;
const STATUSES = [["", "any status"], ["ok", "ok"], ["error", "error"], ["stream_error", "stream error"],
  ["client_disconnected", "client left"], ["4xx", "4xx"], ["5xx", "5xx"], ["200", "200"]];
const RANGES = [["", "all time"], ["1h", "last hour"], ["24h", "last 24 h"], ["7d", "last 7 days"], ["30d", "last 30 days"]];

function field(label, el) {
  return h("label", {}, label, el);
}

export async function render(main) {
  const [status, modelList] = await Promise.all([get("/admin/history/status"), models().catch(() => [])]);
  const fullCapture = status.capture === "full";
  const model = h("input", { id: "f-model", list: "model-names", placeholder: "any" });
  const names = h("datalist", { id: "model-names" }, modelList.map((m) => h("option", { value: m.id })));
  const provider = h("input", { id: "f-provider", placeholder: "any" });
  const key = h("input", { id: "f-key", placeholder: "key-…" });
  const statusSel = h("select", { id: "f-status" }, STATUSES.map(([v, t]) => h("option", { value: v }, t)));
  const since = h("select", { id: "f-since" }, RANGES.map(([v, t]) => h("option", { value: v }, t)));
  const until = h("input", { id: "f-until", placeholder: "ISO time or age" });
  const text = h("input", { id: "f-text", type: "search", placeholder: fullCapture ? "in messages or answers" : "needs capture: full", disabled: !fullCapture });
  const results = h("div", { class: "table-wrap", id: "results" });
  const detail = h("section", { id: "detail", class: "panel stack hidden", "aria-label": "Record", tabindex: "-1" });
  const more = h("div", { class: "row" });
  let offset = 0;

  const filters = () => ({ model: model.value.trim(), provider: provider.value.trim(), key: key.value.trim(),
    status: statusSel.value, since: since.value, until: until.value.trim(), text: fullCapture ? text.value.trim() : "" });

  async function search(event, from = 0) {
    if (event) event.preventDefault();
    offset = from;
    try {
      const page = await get(`/admin/history${query({ ...filters(), limit: PAGE, offset })}`);
      showRows(page);
    } catch (err) {
      clear(results, h("p", { class: "error" }, err.message));
    }
  }

  function showRows(page) {
    const rows = page.data.map((r) => h("tr", { "data-request-id": r.request_id },
      h("td", {}, h("button", { type: "button", class: "quiet open", "aria-label": `Open ${r.request_id}`, onclick: () => open(r.request_id) }, "Open")),
      h("td", {}, (r.timestamp || "").replace("T", " ").slice(0, 19)),
      h("td", { class: "model" }, r.model || "–"), h("td", {}, r.provider || "–"),
      h("td", { class: r.outcome === "ok" ? "ok" : "error" }, `${r.status} ${r.outcome}`),
      h("td", {}, fmt(r.response_time_ms, 0, " ms")), h("td", {}, fmt(r.ttft_ms, 0, " ms")),
      h("td", {}, r.tokens_used ?? "–"), h("td", { class: "cost" }, money(r.cost)),
      h("td", { class: "prompt" }, (r.prompt || "").slice(0, 80))));
    clear(results, rows.length ? h("table", {},
      h("thead", {}, h("tr", {}, ["", "time (UTC)", "model", "provider", "status", "latency", "TTFT", "tokens", "cost", "prompt"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)) : h("p", { class: "muted" }, "No records match."));
    clear(more,
      offset > 0 ? h("button", { type: "button", class: "quiet", onclick: () => search(null, Math.max(0, offset - PAGE)) }, "Newer") : null,
      page.has_more ? h("button", { type: "button", class: "quiet", onclick: () => search(null, offset + PAGE) }, "Older") : null,
      h("span", { class: "muted", id: "shown" }, `${page.data.length} shown from ${offset + 1}`));
  }

  async function open(id) {
    let rec;
    try {
      rec = await get(`/admin/history/${encodeURIComponent(id)}`);
    } catch (err) {
      toast(err.message);
      return;
    }
    const replayModel = h("select", { id: "replay-model", "aria-label": "Replay on model" },
      modelList.map((m) => h("option", { value: m.id, selected: m.id === rec.model }, m.id)));
    const canReplay = Array.isArray(rec.messages) && rec.endpoint === "chat";
    const kv = (pairs) => h("dl", { class: "stats" }, pairs.map(([k, v]) => h("span", {}, `${k} `, h("b", {}, v ?? "–"))));
    clear(detail,
      h("div", { class: "row" }, h("h2", {}, `Record ${rec.request_id}`),
        h("button", { type: "button", class: "quiet", onclick: () => copy(JSON.stringify(rec, null, 2)) }, "Copy JSON"),
        h("button", { type: "button", class: "quiet", onclick: () => detail.classList.add("hidden") }, "Close")),
      kv([["model", rec.model], ["provider", rec.provider], ["deployment", rec.deployment], ["endpoint", rec.endpoint],
        ["status", `${rec.status} ${rec.outcome}`], ["key", rec.key_id], ["stream", String(rec.stream)],
        ["capture", rec.capture]]),
      kv([["latency", fmt(rec.response_time_ms, 0, " ms")], ["TTFT", fmt(rec.ttft_ms, 0, " ms")],
        ["tokens", `${rec.prompt_tokens ?? "–"} in / ${rec.completion_tokens ?? "–"} out`], ["cost", money(rec.cost)],
        ["attempts", rec.attempts], ["cache hit", String(rec.cache_hit)], ["time", rec.timestamp]]),
      rec.capture !== "full" ? h("p", { class: "note" }, "This record was captured as metadata: its messages and answer were not stored.") : null,
      h("h2", {}, "Request"), h("pre", { id: "rec-messages" }, JSON.stringify(rec.messages, null, 2)),
      h("details", {}, h("summary", {}, "Parameters"), h("pre", {}, JSON.stringify(rec.parameters, null, 2))),
      h("h2", {}, "Response"), h("pre", { id: "rec-response" }, rec.response ?? (rec.error ? `${rec.error_type}: ${rec.error}` : "–")),
      rec.tool_calls ? h("pre", {}, JSON.stringify(rec.tool_calls, null, 2)) : null,
      rec.failed_attempts && rec.failed_attempts.length ? h("div", {}, h("h2", {}, "Failed attempts"), h("pre", {}, JSON.stringify(rec.failed_attempts, null, 2))) : null,
      h("h2", {}, "Feedback"),
      rec.feedback && rec.feedback.length ? h("ul", { id: "rec-feedback" }, rec.feedback.map((v) => h("li", {},
        [v.thumbs === 1 ? "thumbs up" : v.thumbs === -1 ? "thumbs down" : "", v.score ? `score ${v.score}` : "", v.preferred ? "preferred" : "",
          v.comment ? `“${v.comment}”` : "", v.who ? `by ${v.who}` : "", v.comparison_id ? `(${v.comparison_id})` : "", v.timestamp].filter(Boolean).join(" "))))
        : h("p", { class: "muted", id: "rec-feedback" }, "No feedback."),
      canReplay ? h("div", { class: "row" }, h("label", {}, "Replay on", replayModel),
        h("button", { type: "button", id: "replay", onclick: () => go("playground", {
          model: replayModel.value, messages: rec.messages, parameters: { ...(rec.parameters || {}), temperature: rec.temperature, max_tokens: rec.max_tokens }, run: true,
        }) }, "Replay in the playground"))
        : h("p", { class: "muted" }, "Replay needs a chat record captured in full."));
    detail.classList.remove("hidden");
    detail.focus();
  }

  async function exportAs(format) {
    try {
      const answer = await request(`/admin/history/export${query({ ...filters(), format })}`, { raw: true });
      download(`history.${format}`, await answer.blob());
    } catch (err) {
      toast(`Export failed: ${err.message}`);
    }
  }

  const form = h("form", { id: "history-filters", class: "panel stack", onsubmit: search },
    h("div", { class: "row" }, field("model", model), names, field("provider", provider), field("status", statusSel),
      field("key", key), field("since", since), field("until", until), field("text", text)),
    h("div", { class: "row" }, h("button", { type: "submit", id: "search" }, "Search"),
      h("button", { type: "button", class: "quiet", id: "export-csv", onclick: () => exportAs("csv") }, "Export CSV"),
      h("button", { type: "button", class: "quiet", id: "export-json", onclick: () => exportAs("json") }, "Export JSON")),
    fullCapture ? null : h("p", { class: "note", id: "capture-note" },
      `Content capture is "${status.capture}": records hold metadata only, so text search and replay are off. ` +
      "Set store.capture: full in gateway.yaml to keep messages and answers."));
  clear(main, h("h1", {}, "History"), form, detail, h("section", { class: "panel" }, results, more));
  await search();
}
