// Access: virtual keys (list, create with the secret shown once, edit limits/budget/models/expiry, revoke,
// rotate), the gateway's rate limits and budgets with what each budget has used, and the audit log.
// Everything goes through /admin/keys, /admin/budgets, /admin/config and /admin/audit: the master key only.
import { get, query, request } from "./api.js";
import { clear, copy, fmt, h, money, toast } from "./dom.js";

const PERIODS = ["month", "week", "day", "total"];
const PAGE = 50;

const iso = (ts) => (ts ? new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19) : "–");
const usd = (value) => (value === 0 ? "$0" : money(value));
const shown = (name, value) => (value !== null && /_at$/.test(name) ? iso(value) : JSON.stringify(value));
const models = (list) => (list === null || list === undefined ? "all" : list.length ? list.join(", ") : "none");

// A failed admin call, said plainly: a virtual key is refused by every admin route.
function refusal(err) {
  if (err.code === "virtual_key_not_admin") {
    return h("p", { class: "error refusal" }, err.message, " Use the Key button (top right) to enter the master key.");
  }
  if (err.status === 401) return h("p", { class: "error refusal" }, `${err.message} Admin pages need the master key.`);
  if (err.status === 503 && err.code === "keys_unavailable") return h("p", { class: "muted" }, err.message);
  return h("p", { class: "error" }, err.message);
}

const field = (label, input) => h("label", {}, label, input);

// The key form's fields; `key` given: the form edits it (blank means unchanged: the API cannot clear a limit).
function keyFields(key) {
  const v = (x) => (x === null || x === undefined ? "" : x);
  const inputs = {
    name: h("input", { name: "name", required: !key, maxlength: 128, value: key ? key.name : "", autocomplete: "off" }),
    project: h("input", { name: "project", maxlength: 128, value: key ? v(key.project) : "" }),
    team: h("input", { name: "team", maxlength: 128, value: key ? v(key.team) : "" }),
    models: h("input", { name: "models", placeholder: "all models; or m-a, gpt-4o*", value: key && key.models ? key.models.join(", ") : "" }),
    expires: h("input", { name: "expires", type: "number", min: 0, step: "any", placeholder: key && key.expires_at ? iso(key.expires_at) : "never" }),
    rpm: h("input", { name: "rpm", type: "number", min: 1, step: 1, value: key ? v(key.rpm) : "" }),
    tpm: h("input", { name: "tpm", type: "number", min: 1, step: 1, value: key ? v(key.tpm) : "" }),
    budget: h("input", { name: "budget_usd", type: "number", min: 0, step: "any", value: key ? v(key.budget_usd) : "" }),
    period: h("select", { name: "budget_period" }, PERIODS.map((p) => h("option", { value: p, selected: key ? key.budget_period === p : p === "month" }, p))),
  };
  const grid = h("div", { class: "row fields" },
    field("name", inputs.name), field("project", inputs.project), field("team", inputs.team),
    field("models (comma-separated globs)", inputs.models), field("expires in (days)", inputs.expires),
    field("rpm", inputs.rpm), field("tpm", inputs.tpm), field("budget (USD)", inputs.budget), field("budget period", inputs.period));
  function body() {
    const out = {};
    const text = (name, el) => { if (el.value.trim()) out[name] = el.value.trim(); };
    text("name", inputs.name); text("project", inputs.project); text("team", inputs.team);
    if (inputs.models.value.trim()) out.models = inputs.models.value.split(",").map((m) => m.trim()).filter(Boolean);
    if (inputs.expires.value !== "") out.expires_in_s = Number(inputs.expires.value) * 86400;
    if (inputs.rpm.value !== "") out.rpm = Number(inputs.rpm.value);
    if (inputs.tpm.value !== "") out.tpm = Number(inputs.tpm.value);
    if (inputs.budget.value !== "") out.budget_usd = Number(inputs.budget.value);
    if (!key || inputs.budget.value !== "" || inputs.period.value !== key.budget_period) out.budget_period = inputs.period.value;
    if (key) for (const name of Object.keys(out)) if (JSON.stringify(out[name]) === JSON.stringify(key[name])) delete out[name];
    return out;
  }
  return { grid, body, first: inputs.name };
}

export async function render(main) {
  const keysBox = h("div", { id: "keys", class: "table-wrap" }, h("p", { class: "muted" }, "Loading keys…"));
  const secretBox = h("div", { id: "secret-box", "aria-live": "polite" });
  const editBox = h("div", { id: "key-edit" });
  const limitsBox = h("div", { id: "limits", class: "stack" });
  const budgetsBox = h("div", { id: "budgets", class: "table-wrap" });
  const auditBox = h("div", { id: "audit", class: "table-wrap" });
  let spend = {};
  let pages = [];  // the `until` of each audit page shown so far (null: the newest)

  function showSecret(answer, verb) {
    const code = h("code", { id: "secret" }, answer.key);
    clear(secretBox, h("div", { class: "note secret", role: "alert" },
      h("p", {}, h("b", {}, `Key ${answer.name} ${verb}. `), "Copy this secret now: ", h("b", {}, "you won't see it again"),
        " (the gateway keeps only its hash)."),
      h("div", { class: "row" }, code,
        h("button", { type: "button", id: "secret-copy", onclick: () => copy(answer.key) }, "Copy"),
        h("button", { type: "button", class: "quiet", id: "secret-done", onclick: () => clear(secretBox) }, "I have stored it"))));
    code.scrollIntoView({ block: "nearest" });
  }

  async function act(path, method, body, done) {
    try {
      const answer = await request(path, { method, body });
      await done(answer);
      await Promise.all([loadKeys(), loadLimits(), loadAudit()]);
    } catch (err) {
      toast(`Refused: ${err.message}`);
      return err;
    }
    return null;
  }

  function edit(key) {
    const form = keyFields(key);
    const problem = h("p", { class: "error", id: "key-edit-error" });
    clear(editBox, h("form", { class: "panel stack", "aria-label": `Edit ${key.name}`, onsubmit: async (event) => {
      event.preventDefault();
      const body = form.body();
      if (!Object.keys(body).length) { problem.textContent = "Nothing changed."; return; }
      const err = await act(`/admin/keys/${encodeURIComponent(key.id)}`, "PATCH", body, () => { clear(editBox); toast(`Saved ${key.name}`); });
      if (err) problem.textContent = err.message;
    } },
    h("h3", {}, `Edit ${key.name} `, h("code", {}, key.id)),
    h("p", { class: "muted" }, "Blank fields stay as they are (a limit can be changed, not removed, through the API)."),
    form.grid, problem,
    h("div", { class: "row" }, h("button", { type: "submit", id: "key-save-edit" }, "Save"),
      h("button", { type: "button", class: "quiet", onclick: () => clear(editBox) }, "Cancel"))));
    form.first.focus();
  }

  async function loadKeys() {
    let list;
    try {
      const [keys, budgets] = await Promise.all([get("/admin/keys"), get("/admin/budgets").catch(() => ({ data: [] }))]);
      list = keys.data;
      spend = Object.fromEntries(budgets.data.filter((b) => b.scope === "key").map((b) => [b.name, b]));
    } catch (err) {
      clear(keysBox, refusal(err));
      return;
    }
    if (!list.length) { clear(keysBox, h("p", { class: "muted" }, "No virtual keys yet.")); return; }
    const rows = list.map((k) => {
      const used = spend[k.id];
      const live = k.status === "active";
      return h("tr", { "data-key": k.name, class: live ? "" : "muted" },
        h("td", {}, k.name), h("td", {}, h("code", {}, k.id)), h("td", {}, h("code", {}, k.key_hint)),
        h("td", {}, [k.project, k.team].filter(Boolean).join(" / ") || "–"),
        h("td", {}, models(k.models)), h("td", {}, iso(k.expires_at)),
        h("td", { class: "rpm" }, k.rpm ?? "–"), h("td", {}, k.tpm ?? "–"),
        h("td", { class: "budget" }, k.budget_usd === null ? "–" : `${used && used.used_usd !== null ? `${usd(used.used_usd)} of ` : ""}$${k.budget_usd} / ${k.budget_period}`),
        h("td", { class: `status ${k.status === "active" ? "ok" : "error"}` }, k.status === "revoked" ? `revoked ${iso(k.revoked_at)}` : k.status),
        h("td", { class: "actions" }, live ? h("div", { class: "row" },
          h("button", { type: "button", class: "quiet", "aria-label": `Edit ${k.name}`, onclick: () => edit(k) }, "Edit"),
          h("button", { type: "button", class: "quiet", "aria-label": `Rotate ${k.name}`, onclick: () => {
            if (window.confirm(`Rotate ${k.name}? Its current secret stops working now.`)) act(`/admin/keys/${encodeURIComponent(k.id)}/rotate`, "POST", {}, (a) => showSecret(a, "rotated"));
          } }, "Rotate"),
          h("button", { type: "button", class: "quiet danger", "aria-label": `Revoke ${k.name}`, onclick: () => {
            if (window.confirm(`Revoke ${k.name}? Requests with it are refused within a second. This cannot be undone.`)) act(`/admin/keys/${encodeURIComponent(k.id)}/revoke`, "POST", {}, () => toast(`Revoked ${k.name}`));
          } }, "Revoke")) : ""));
    });
    clear(keysBox, h("table", {}, h("thead", {}, h("tr", {}, ["name", "id", "hint", "project / team", "models", "expires (UTC)", "rpm", "tpm", "budget (used)", "status", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)));
  }

  function createForm() {
    const form = keyFields(null);
    const problem = h("p", { class: "error", id: "key-create-error" });
    return h("details", { id: "key-create" }, h("summary", {}, "Create a key"),
      h("form", { class: "stack", "aria-label": "Create a key", onsubmit: async (event) => {
        event.preventDefault();
        problem.textContent = "";
        const err = await act("/admin/keys", "POST", form.body(), (a) => {
          event.target.reset();
          event.target.closest("details").open = false;
          showSecret(a, "created");
        });
        if (err) problem.textContent = err.message;
      } }, form.grid, problem, h("button", { type: "submit", id: "key-create-submit" }, "Create key")));
  }

  async function loadLimits() {
    let config;
    let budgets;
    try {
      [config, budgets] = await Promise.all([get("/admin/config"), get("/admin/budgets")]);
    } catch (err) {
      clear(limitsBox, refusal(err));
      clear(budgetsBox);
      return;
    }
    const gw = (config.config && (config.config.gateway || config.config)) || {};
    clear(limitsBox,
      h("p", { class: "muted" }, "Gateway-wide and per-model limits and the configured budgets live in gateway.yaml (",
        h("code", {}, "rate_limits:"), ", ", h("code", {}, "budgets:"), "): edit the file, then ",
        h("a", { href: "#/operations" }, "Validate and Reload on the Operations page"),
        ". A key's own rpm, tpm and budget are edited above (Edit)."),
      h("div", { class: "cols" },
        h("div", {}, h("h3", {}, "rate_limits"), h("pre", { id: "rate-limits" }, gw.rate_limits ? JSON.stringify(gw.rate_limits, null, 2) : "none configured")),
        h("div", {}, h("h3", {}, "budgets"), h("pre", { id: "budgets-config" }, gw.budgets ? JSON.stringify(gw.budgets, null, 2) : "none configured"))));
    const rows = budgets.data.map((b) => {
      const share = b.used_usd === null || !b.limit_usd ? null : Math.min(b.used_usd / b.limit_usd, 1);
      return h("tr", { "data-budget": b.budget },
        h("td", {}, b.scope === "key" ? `key ${b.key_name}` : b.budget), h("td", {}, `$${b.limit_usd}`), h("td", {}, b.period),
        h("td", {}, b.window), h("td", { class: "used" }, b.used_usd === null ? "unknown" : usd(b.used_usd)),
        h("td", {}, share === null ? "–" : h("meter", { min: 0, max: 1, low: 0.5, high: 0.8, optimum: 0, value: share, "aria-label": `${b.budget} used` })),
        h("td", {}, b.resets_in_s === null ? "never" : b.resets_in_s > 172800 ? `in ${fmt(b.resets_in_s / 86400, 1, " days")}` : `in ${fmt(b.resets_in_s / 3600, 1, " h")}`));
    });
    clear(budgetsBox,
      h("div", { class: "stats" }, h("span", {}, "counters ", h("b", {}, budgets.backend || "none (nothing limited)"))),
      budgets.error ? h("p", { class: "error" }, budgets.error) : null,
      rows.length ? h("table", {}, h("thead", {}, h("tr", {}, ["budget", "limit", "period", "window", "used", "", "resets"].map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, rows))
        : h("p", { class: "muted" }, "No budgets: none configured and no key has one."),
      h("p", { class: "muted" }, "Used: settled spend plus the estimates of requests in flight in the current window (UTC)."));
  }

  const filters = {
    action: h("input", { id: "audit-action", list: "audit-actions", placeholder: "key. or key.revoke", "aria-label": "Action" }),
    q: h("input", { id: "audit-q", type: "search", placeholder: "actor, target, name…", "aria-label": "Search", maxlength: 200 }),
    since: h("input", { id: "audit-since", type: "datetime-local", "aria-label": "Since (UTC)" }),
  };
  const older = h("button", { type: "button", class: "quiet", id: "audit-older", disabled: true }, "Older");
  const newer = h("button", { type: "button", class: "quiet", id: "audit-newer", disabled: true }, "Newer");

  async function loadAudit(until = pages.length ? pages[pages.length - 1] : null) {
    const since = filters.since.value ? Date.parse(`${filters.since.value}Z`) / 1000 : "";
    let page;
    try {
      page = await get(`/admin/audit${query({ action: filters.action.value.trim(), q: filters.q.value.trim(), since, until, limit: PAGE + 1 })}`);
    } catch (err) {
      clear(auditBox, refusal(err));
      return;
    }
    const entries = page.data.slice(0, PAGE);
    older.disabled = page.data.length <= PAGE;
    older.onclick = () => { pages.push(entries[entries.length - 1].ts); loadAudit(); };
    newer.disabled = pages.length === 0;
    // what changed: fields that differ (an update), the fields set (a create), times as UTC
    const summary = (e) => {
      const quiet = new Set(["updated_at", "created_at", "id", "status"]);
      if (!e.before || !e.after || typeof e.before !== "object" || typeof e.after !== "object") {
        const state = e.after ?? e.before;
        if (!state || typeof state !== "object") return state === null || state === undefined ? "" : JSON.stringify(state);
        return Object.entries(state).filter(([k, v]) => v !== null && !quiet.has(k)).map(([k, v]) => `${k}=${shown(k, v)}`).join(", ");
      }
      const changed = Object.keys({ ...e.before, ...e.after }).filter((k) => !quiet.has(k) && JSON.stringify(e.before[k] ?? null) !== JSON.stringify(e.after[k] ?? null));
      return changed.map((k) => `${k}: ${shown(k, e.before[k] ?? null)} → ${shown(k, e.after[k] ?? null)}`).join("; ");
    };
    clear(auditBox, entries.length ? h("table", {},
      h("thead", {}, h("tr", {}, ["time (UTC)", "actor", "action", "target", "change"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, entries.map((e) => h("tr", { "data-action": e.action },
        h("td", {}, iso(e.ts)), h("td", {}, h("code", {}, e.actor)), h("td", { class: "action" }, e.action),
        h("td", {}, e.target || "–"), h("td", { class: "change" }, summary(e))))))
      : h("p", { class: "muted" }, "No audit entries match."));
  }
  newer.addEventListener("click", () => { pages.pop(); loadAudit(); });
  const search = (event) => { event.preventDefault(); pages = []; loadAudit(null); };

  clear(main, h("h1", {}, "Access"),
    h("section", { class: "panel stack", "aria-label": "Virtual keys" },
      h("div", { class: "row" }, h("h2", {}, "Virtual keys"), h("button", { type: "button", class: "quiet", onclick: loadKeys }, "Refresh")),
      secretBox, createForm(), editBox, keysBox),
    h("section", { class: "panel stack", "aria-label": "Limits and budgets" },
      h("div", { class: "row" }, h("h2", {}, "Limits and budgets"), h("button", { type: "button", class: "quiet", id: "budgets-refresh", onclick: loadLimits }, "Refresh")),
      limitsBox, budgetsBox),
    h("section", { class: "panel stack", "aria-label": "Audit log" }, h("h2", {}, "Audit log"),
      h("form", { class: "row", role: "search", "aria-label": "Filter the audit log", onsubmit: search },
        field("action", filters.action), field("search", filters.q), field("since (UTC)", filters.since),
        h("button", { type: "submit", id: "audit-search" }, "Filter"),
        h("datalist", { id: "audit-actions" }, ["key.", "key.create", "key.update", "key.revoke", "key.rotate", "config.", "cache."].map((a) => h("option", { value: a })))),
      auditBox, h("div", { class: "row" }, newer, older)));
  await Promise.all([loadKeys(), loadLimits(), loadAudit(null)]);
}
