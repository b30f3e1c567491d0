// Playground: pick a model, compose a multi-turn chat, set parameters, stream the answer with its timings.
import { post, record } from "./api.js";
import { clear, copy, fmt, h, money, toast } from "./dom.js";
import { handoff } from "./nav.js";
import { curlOf, models, pythonOf, run } from "./stream.js";

const ROLES = ["system", "user", "assistant"];
let controller = null;

export function leave() {
  if (controller) controller.abort();
}

function turnRow(role, content, onRemove) {
  const select = h("select", { "aria-label": "Role", class: "role" }, ROLES.map((r) => h("option", { value: r, selected: r === role }, r)));
  const text = h("textarea", { "aria-label": `${role} message`, class: "content", rows: 3 });
  text.value = content;
  select.addEventListener("change", () => text.setAttribute("aria-label", `${select.value} message`));
  const row = h("div", { class: "turn" }, select, text,
    h("button", { type: "button", class: "quiet", "aria-label": "Remove this turn", onclick: () => onRemove(row) }, "✕"));
  return row;
}

export function modelLabel(m) {
  const caps = (m.capabilities || []).length ? ` · ${m.capabilities.join(", ")}` : "";
  return `${m.id} — ${m.provider || m.owned_by}${caps}`;
}

export async function render(main) {
  const given = handoff("playground");
  const list = await models();
  const model = h("select", { id: "model", "aria-label": "Model" }, list.map((m) => h("option", { value: m.id }, modelLabel(m))));
  if (given && given.model && list.some((m) => m.id === given.model)) model.value = given.model;
  const turns = h("div", { id: "turns", class: "stack" });
  const remove = (row) => { row.remove(); };
  const addTurn = (role, content = "") => { const row = turnRow(role, content, remove); turns.append(row); return row; };
  const start = given && Array.isArray(given.messages) ? given.messages : [{ role: "system", content: "" }, { role: "user", content: "" }];
  for (const m of start) addTurn(ROLES.includes(m.role) ? m.role : "user", typeof m.content === "string" ? m.content : JSON.stringify(m.content));

  const p = (given && given.parameters) || {};
  const temperature = h("input", { id: "temperature", type: "number", min: 0, max: 2, step: 0.1, value: p.temperature ?? 0.7 });
  const maxTokens = h("input", { id: "max-tokens", type: "number", min: 1, step: 1, value: p.max_tokens ?? 256 });
  const topP = h("input", { id: "top-p", type: "number", min: 0, max: 1, step: 0.05, value: p.top_p ?? 1 });
  const stop = h("input", { id: "stop", type: "text", placeholder: "comma-separated", value: Array.isArray(p.stop) ? p.stop.join(",") : p.stop || "" });
  const stream = h("input", { id: "stream", type: "checkbox", checked: true });
  const tools = h("textarea", { id: "tools", class: "code", rows: 3, placeholder: '[{"type": "function", "function": {"name": "…", "parameters": {}}}]' });
  if (p.tools) tools.value = JSON.stringify(p.tools, null, 2);

  const answer = h("div", { id: "answer", class: "answer", "aria-live": "polite", "aria-label": "Answer" });
  const stats = h("div", { class: "stats", id: "stats" });
  const send = h("button", { type: "submit", id: "send" }, "Send");
  const stopButton = h("button", { type: "button", id: "stop-button", class: "quiet", disabled: true }, "Stop");
  const requestView = h("pre", { id: "raw-request" });
  const responseView = h("pre", { id: "raw-response" });
  const curlView = h("pre", { id: "curl" });
  const pythonView = h("pre", { id: "python" });
  const feedback = h("div", { class: "row", id: "feedback" });

  function body() {
    const messages = [...turns.querySelectorAll(".turn")].map((row) => ({
      role: row.querySelector(".role").value, content: row.querySelector(".content").value,
    })).filter((m) => m.content.trim() !== "" || m.role !== "system");
    const out = { model: model.value, messages, stream: stream.checked };
    if (temperature.value !== "") out.temperature = Number(temperature.value);
    if (maxTokens.value !== "") out.max_tokens = Number(maxTokens.value);
    if (topP.value !== "" && Number(topP.value) !== 1) out.top_p = Number(topP.value);
    const stops = stop.value.split(",").map((s) => s.trim()).filter(Boolean);
    if (stops.length) out.stop = stops;
    if (tools.value.trim()) out.tools = JSON.parse(tools.value);
    if (out.stream) out.stream_options = { include_usage: true };
    return out;
  }

  function showRequest() {
    try {
      const b = body();
      requestView.textContent = JSON.stringify(b, null, 2);
      curlView.textContent = curlOf(b);
      pythonView.textContent = pythonOf(b);
    } catch (err) {
      requestView.textContent = `tools is not valid JSON: ${err.message}`;
    }
  }

  function stat(label, id, value) {
    return h("span", {}, `${label} `, h("b", { id }, value));
  }

  async function submit(event) {
    event.preventDefault();
    let b;
    try { b = body(); } catch (err) { toast(`tools: ${err.message}`); tools.focus(); return; }
    showRequest();
    clear(answer);
    clear(feedback);
    clear(stats, h("span", {}, "Waiting for the first token…"));
    answer.classList.remove("error");
    send.disabled = true;
    stopButton.disabled = false;
    controller = new AbortController();
    let tokens = 0;
    try {
      const result = await run(b, { signal: controller.signal, onText: (delta) => {
        tokens += 1;
        answer.append(h("span", { class: "tok" }, delta));
        answer.dataset.chunks = String(tokens);
      } });
      if (result.toolCalls.length) answer.append(h("pre", {}, JSON.stringify(result.toolCalls, null, 2)));
      responseView.textContent = result.raw;
      const u = result.usage || {};
      clear(stats,
        stat("TTFT", "ttft", fmt(result.ttftMs, 0, " ms")),
        stat("total", "total", fmt(result.totalMs, 0, " ms")),
        stat("tokens", "tokens", `${u.prompt_tokens ?? "–"} in / ${u.completion_tokens ?? "–"} out`),
        stat("tokens/s", "tps", fmt(result.tokensPerS, 1)),
        stat("cost", "cost", "…"),
        stat("provider", "provider", result.provider || "–"),
        result.cache ? stat("cache", "cache", result.cache) : null,
        stat("request", "request-id", result.requestId || "–"));
      answer.dataset.requestId = result.requestId || "";
      clear(feedback,
        h("span", { class: "muted" }, "Was this good?"),
        voteButton("▲ Good", "Thumbs up", result.requestId, { thumbs: "up" }),
        voteButton("▼ Bad", "Thumbs down", result.requestId, { thumbs: "down" }),
        h("button", { type: "button", class: "quiet", onclick: () => {
          addTurn("assistant", result.text);
          addTurn("user", "").querySelector("textarea").focus();
        } }, "Continue the conversation"));
      record(result.requestId).then((rec) => {
        const cost = document.getElementById("cost");
        if (cost) cost.textContent = rec ? money(rec.cost) : "n/a";
      }).catch(() => {
        const cost = document.getElementById("cost");
        if (cost) cost.textContent = "n/a (admin key needed)";
      });
    } catch (err) {
      if (err.name === "AbortError") {
        clear(stats, h("span", {}, "Stopped."));
      } else {
        answer.classList.add("error");
        answer.textContent = `${err.status || ""} ${err.message}`;
        clear(stats, h("span", {}, `request ${err.requestId || "–"}`));
      }
    } finally {
      send.disabled = false;
      stopButton.disabled = true;
      controller = null;
    }
  }

  function voteButton(icon, label, requestId, vote) {
    const button = h("button", { type: "button", class: "quiet vote", "aria-label": label, "aria-pressed": "false" }, icon);
    button.addEventListener("click", async () => {
      try {
        await post("/v1/feedback", { request_id: requestId, who: "lab-ui", ...vote });
        for (const b of feedback.querySelectorAll(".vote")) b.setAttribute("aria-pressed", String(b === button));
        toast("Feedback saved");
      } catch (err) {
        toast(`Feedback not saved: ${err.message}`);
      }
    });
    return button;
  }

  stopButton.addEventListener("click", () => controller && controller.abort());
  const form = h("form", { id: "playground", onsubmit: submit, oninput: showRequest },
    h("div", { class: "grid" },
      h("section", { class: "panel stack", "aria-label": "Conversation" },
        h("label", {}, "Model", model),
        turns,
        h("div", { class: "row" },
          h("button", { type: "button", class: "quiet", onclick: () => addTurn("user").querySelector("textarea").focus() }, "+ User"),
          h("button", { type: "button", class: "quiet", onclick: () => addTurn("assistant").querySelector("textarea").focus() }, "+ Assistant"),
          h("span", { class: "muted" }, "Ctrl+Enter sends")),
        h("div", { class: "row" }, send, stopButton),
        answer, stats, feedback),
      h("section", { class: "panel stack", "aria-label": "Parameters" },
        h("h2", {}, "Parameters"),
        h("label", {}, "temperature", temperature), h("label", {}, "max_tokens", maxTokens),
        h("label", {}, "top_p", topP), h("label", {}, "stop", stop),
        h("label", { class: "inline" }, stream, "stream"),
        h("label", {}, "tools (JSON)", tools))),
    h("section", { class: "panel" },
      h("h2", {}, "Raw"),
      h("details", {}, h("summary", {}, "Request"), requestView, h("button", { type: "button", class: "quiet", onclick: () => copy(requestView.textContent) }, "Copy JSON")),
      h("details", {}, h("summary", {}, "Response"), responseView, h("button", { type: "button", class: "quiet", onclick: () => copy(responseView.textContent) }, "Copy")),
      h("details", {}, h("summary", {}, "curl"), curlView, h("button", { type: "button", class: "quiet", id: "copy-curl", onclick: () => copy(curlView.textContent) }, "Copy curl")),
      h("details", {}, h("summary", {}, "Python (openai SDK)"), pythonView, h("button", { type: "button", class: "quiet", onclick: () => copy(pythonView.textContent) }, "Copy Python"))));
  form.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
  });
  form.addEventListener("change", showRequest);
  clear(main, h("h1", {}, "Playground"), list.length ? null : h("p", { class: "note" }, "This gateway routes no models."), form);
  showRequest();
  if (given && given.run) form.requestSubmit();
}
