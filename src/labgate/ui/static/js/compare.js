// Compare: one prompt to 2–4 models at once, streamed side by side; thumbs and a preferred-answer vote per
// run go to POST /v1/feedback (with a shared comparison_id). Blind mode hides the names until the vote.
import { post, record } from "./api.js";
import { clear, fmt, h, money, toast } from "./dom.js";
import { models, run } from "./stream.js";

const SLOTS = 4;
let controllers = [];

export function leave() {
  for (const c of controllers) c.abort();
  controllers = [];
}

function shuffle(items) {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i -= 1) {
    const j = Math.floor(Math.random() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

export async function render(main) {
  const list = await models();
  const pickers = [];
  for (let i = 0; i < SLOTS; i += 1) {
    const select = h("select", { id: `cmp-model-${i}`, "aria-label": `Model ${i + 1}` },
      i >= 2 ? h("option", { value: "" }, "(none)") : null,
      list.map((m) => h("option", { value: m.id }, `${m.id} — ${m.provider || m.owned_by}`)));
    select.value = i < Math.min(3, list.length) ? list[i].id : "";
    pickers.push(select);
  }
  const system = h("textarea", { id: "cmp-system", rows: 2, "aria-label": "System prompt", placeholder: "System prompt (optional)" });
  const prompt = h("textarea", { id: "cmp-prompt", rows: 4, "aria-label": "Prompt", placeholder: "One prompt, sent to every model" });
  const maxTokens = h("input", { id: "cmp-max-tokens", type: "number", min: 1, value: 256 });
  const temperature = h("input", { id: "cmp-temperature", type: "number", min: 0, max: 2, step: 0.1, value: 0.7 });
  const blind = h("input", { id: "blind", type: "checkbox" });
  const runButton = h("button", { type: "submit", id: "cmp-run" }, "Run");
  const columns = h("div", { class: "cols", id: "columns" });
  const summary = h("p", { class: "muted", id: "cmp-summary" });

  async function submit(event) {
    event.preventDefault();
    leave();
    const chosen = pickers.map((p) => p.value).filter(Boolean);
    if (chosen.length < 2) { toast("Pick at least two models"); return; }
    if (!prompt.value.trim()) { toast("Write a prompt"); prompt.focus(); return; }
    const comparisonId = `cmp_${crypto.randomUUID().replaceAll("-", "")}`;
    const isBlind = blind.checked;
    const order = isBlind ? shuffle(chosen) : chosen;
    const messages = [...(system.value.trim() ? [{ role: "system", content: system.value }] : []),
                      { role: "user", content: prompt.value }];
    runButton.disabled = true;
    summary.textContent = `Comparison ${comparisonId}`;
    summary.dataset.comparisonId = comparisonId;
    let revealed = !isBlind;
    const cols = order.map((model, i) => {
      const label = String.fromCharCode(65 + i);
      const title = h("h2", { class: "col-title" }, isBlind ? `Model ${label}` : model);
      const answer = h("div", { class: "answer", "aria-live": "polite" });
      const stats = h("div", { class: "stats" }, "Waiting…");
      const votes = h("div", { class: "row votes" });
      const el = h("section", { class: "panel stack column", "data-slot": label, "aria-label": isBlind ? `Model ${label}` : model },
        title, answer, stats, votes);
      return { model, label, title, answer, stats, votes, el, requestId: null };
    });
    clear(columns, cols.map((c) => c.el));

    function reveal() {
      revealed = true;
      for (const c of cols) {
        c.title.textContent = `${c.model} (was Model ${c.label})`;
        c.el.setAttribute("aria-label", c.model);
        c.el.dataset.model = c.model;
      }
    }

    async function vote(col, fields, button) {
      try {
        await post("/v1/feedback", { request_id: col.requestId, comparison_id: comparisonId, who: "lab-ui", ...fields });
        button.setAttribute("aria-pressed", "true");
        if (fields.preferred) {
          col.el.classList.add("chosen");
          for (const c of cols) for (const b of c.votes.querySelectorAll(".prefer")) b.disabled = true;
          if (!revealed) reveal();
        }
        toast("Vote saved");
      } catch (err) {
        toast(`Vote not saved: ${err.message}`);
      }
    }

    await Promise.all(cols.map(async (col) => {
      const controller = new AbortController();
      controllers.push(controller);
      const body = { model: col.model, messages, stream: true, stream_options: { include_usage: true },
                     max_tokens: Number(maxTokens.value) || 256, temperature: Number(temperature.value) };
      try {
        const result = await run(body, { signal: controller.signal, onText: (delta) => col.answer.append(h("span", { class: "tok" }, delta)) });
        col.requestId = result.requestId;
        col.el.dataset.requestId = result.requestId;
        const u = result.usage || {};
        const cost = h("b", { class: "cost" }, "…");
        clear(col.stats,
          h("span", {}, "latency ", h("b", { class: "latency" }, fmt(result.totalMs, 0, " ms"))),
          h("span", {}, "TTFT ", h("b", { class: "ttft" }, fmt(result.ttftMs, 0, " ms"))),
          h("span", {}, "tokens ", h("b", { class: "tokens" }, `${u.prompt_tokens ?? "–"} / ${u.completion_tokens ?? "–"}`)),
          h("span", {}, "tok/s ", h("b", {}, fmt(result.tokensPerS, 1))),
          h("span", {}, "cost ", cost));
        record(result.requestId).then((rec) => { cost.textContent = rec ? money(rec.cost) : "n/a"; })
          .catch(() => { cost.textContent = "n/a"; });
        const up = h("button", { type: "button", class: "quiet", "aria-label": `Thumbs up for ${isBlind ? `Model ${col.label}` : col.model}`, "aria-pressed": "false" }, "▲ Good");
        const down = h("button", { type: "button", class: "quiet", "aria-label": `Thumbs down for ${isBlind ? `Model ${col.label}` : col.model}`, "aria-pressed": "false" }, "▼ Bad");
        const prefer = h("button", { type: "button", class: "prefer", "aria-pressed": "false" }, "Prefer this answer");
        up.addEventListener("click", () => vote(col, { thumbs: "up" }, up));
        down.addEventListener("click", () => vote(col, { thumbs: "down" }, down));
        prefer.addEventListener("click", () => vote(col, { preferred: true }, prefer));
        clear(col.votes, up, down, prefer);
      } catch (err) {
        col.answer.classList.add("error");
        col.answer.textContent = err.name === "AbortError" ? "Stopped." : `${err.status || ""} ${err.message}`;
        clear(col.stats, h("span", {}, `request ${err.requestId || "–"}`));
      }
    }));
    runButton.disabled = false;
    controllers = [];
  }

  const form = h("form", { id: "compare", onsubmit: submit, class: "stack" },
    h("section", { class: "panel stack" },
      h("div", { class: "row" }, pickers.map((p, i) => h("label", {}, `Model ${i + 1}`, p))),
      system, prompt,
      h("div", { class: "row" }, h("label", {}, "max_tokens", maxTokens), h("label", {}, "temperature", temperature),
        h("label", { class: "inline" }, blind, "Blind (names hidden until you pick the preferred answer)"), runButton)),
    summary, columns);
  form.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit(); });
  clear(main, h("h1", {}, "Compare models"), form);
}
