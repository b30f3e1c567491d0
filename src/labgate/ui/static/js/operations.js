// Operations: providers and their health, the running config (secrets masked by the gateway), validate
// (shows the diff against what serves) then reload, the config backups with restore, and the response cache
// (stats, keys, flush) where it is configured.
import { get, post } from "./api.js";
import { clear, fmt, h, toast } from "./dom.js";

function changeList(changes) {
  if (!changes.length) return h("p", { class: "muted" }, "No differences: the files on disk are what serves.");
  return h("ul", { id: "diff" }, changes.map((c) => h("li", { class: ["+", "added"].includes(c.op) ? "diff-add" : ["-", "removed"].includes(c.op) ? "diff-del" : "" },
    `${c.op} ${c.section} ${c.name}${c.detail ? `: ${c.detail}` : ""}`)));
}

function problemList(problems) {
  return h("ul", { class: "error" }, problems.map((p) => h("li", {}, `${p.file || ""} ${p.key || ""}: ${p.message || JSON.stringify(p)}${p.hint ? ` (${p.hint})` : ""}`)));
}

export async function render(main) {
  const providersBox = h("div", { class: "table-wrap", id: "providers" }, h("p", { class: "muted" }, "Probing providers…"));
  const configBox = h("div", { id: "config" });
  const validateBox = h("div", { id: "validation", "aria-live": "polite" });
  const backupsBox = h("div", { id: "backups", class: "table-wrap" });
  const cacheBox = h("div", { id: "cache", class: "table-wrap" });
  const validate = h("button", { type: "button", id: "validate" }, "Validate files on disk");
  const reload = h("button", { type: "button", id: "reload", disabled: true }, "Reload");

  async function loadProviders() {
    try {
      const report = await get("/health/providers");
      const rows = Object.entries(report.providers || {}).map(([name, p]) => h("tr", { "data-provider": name },
        h("td", {}, name), h("td", {}, p.status),
        h("td", { class: p.reachable === false ? "error" : p.reachable ? "ok" : "muted" }, p.reachable === null || p.reachable === undefined ? "not probed" : p.reachable ? "reachable" : "unreachable"),
        h("td", {}, fmt(p.latency_ms, 1, " ms")),
        h("td", {}, (p.configured_models || []).join(", ")),
        h("td", { class: (p.missing_models || []).length ? "error" : "" }, (p.missing_models || []).join(", ") || "–"),
        h("td", { class: "error" }, p.error || "")));
      clear(providersBox, h("table", {}, h("thead", {}, h("tr", {}, ["provider", "status", "health", "probe", "models", "missing", "error"].map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, rows)));
    } catch (err) {
      clear(providersBox, h("p", { class: "error" }, err.message));
    }
  }

  async function loadConfig() {
    try {
      const c = await get("/admin/config");
      const last = c.last_reload;
      clear(configBox,
        h("div", { class: "stats" },
          h("span", {}, "version ", h("b", { id: "config-version" }, c.version)),
          h("span", {}, "source ", h("b", {}, c.source)),
          h("span", {}, "loaded ", h("b", {}, c.loaded_at_iso)),
          h("span", {}, "reloads ", h("b", { id: "config-reloads" }, c.reloads)),
          h("span", {}, "last reload ", h("b", {}, last ? `${last.status} (${last.trigger})` : "–"))),
        c.reloadable ? null : h("p", { class: "note" }, "This config was built in memory, not read from files: there is nothing to reload."),
        c.warnings.length ? problemList(c.warnings) : null,
        h("details", {}, h("summary", {}, "Running config (secrets masked)"), h("pre", { id: "config-view" }, JSON.stringify(c.config, null, 2))));
      validate.disabled = !c.reloadable;
    } catch (err) {
      clear(configBox, h("p", { class: "error" }, err.message));
    }
  }

  async function loadBackups() {
    try {
      const list = await get("/admin/config/backups");
      clear(backupsBox, list.data.length ? h("table", {},
        h("thead", {}, h("tr", {}, ["backup", "version", "reason", "files", ""].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, list.data.map((b) => h("tr", { "data-backup": b.name },
          h("td", {}, b.name), h("td", {}, b.version || "–"), h("td", {}, b.reason || "–"), h("td", {}, (b.files || []).join(", ")),
          h("td", {}, h("button", { type: "button", class: "quiet restore", "aria-label": `Restore ${b.name}`, onclick: () => restore(b.name) }, "Restore"))))))
        : h("p", { class: "muted" }, `No backups yet in ${list.directory}.`));
    } catch (err) {
      clear(backupsBox, h("p", { class: "muted" }, err.status === 404 ? "This gateway has no backup API." : err.message));
    }
  }

  async function loadCache() {
    let stats;
    let keys;
    try {
      [stats, keys] = await Promise.all([get("/admin/cache/stats"), get("/admin/cache/keys?limit=20")]);
    } catch (err) {
      clear(cacheBox, h("p", { class: "muted" }, err.status === 404 ? "This gateway has no cache API." : err.message));
      return;
    }
    const t = stats.total || {};
    const c = stats.config || {};
    const b = stats.backend || {};
    const flush = h("button", { type: "button", class: "quiet", id: "cache-flush", onclick: async () => {
      if (!window.confirm("Delete every cached answer in every namespace?")) return;
      try {
        const r = await post("/admin/cache/flush", {});
        toast(`Flushed ${r.deleted} entries`);
        await loadCache();
      } catch (err) {
        toast(`Flush refused: ${err.message}`);
      }
    } }, "Flush the cache");
    clear(cacheBox,
      h("div", { class: "stats" },
        h("span", {}, "backend ", h("b", {}, `${b.backend || "–"}${b.up === false ? " (down)" : ""}`)),
        h("span", {}, "entries ", h("b", { id: "cache-entries" }, t.entries ?? 0)),
        h("span", {}, "bytes ", h("b", {}, t.bytes ?? 0)),
        h("span", {}, "hit rate ", h("b", { id: "cache-hit-rate" }, fmt((t.hit_rate || 0) * 100, 1, "%"))),
        h("span", {}, "hits ", h("b", {}, t.hits ?? 0)), h("span", {}, "misses ", h("b", {}, t.misses ?? 0)),
        h("span", {}, "saved tokens ", h("b", {}, t.saved_tokens ?? 0)),
        h("span", {}, "namespace ", h("b", {}, c.namespace ?? "–")), h("span", {}, "ttl ", h("b", {}, fmt(c.ttl_s, 0, " s")))),
      keys.data.length ? h("table", {}, h("thead", {}, h("tr", {}, ["key", "namespace", "bytes", "expires in"].map((x) => h("th", { scope: "col" }, x)))),
        h("tbody", {}, keys.data.map((k) => h("tr", {}, h("td", {}, h("code", {}, k.key)), h("td", {}, k.namespace), h("td", {}, k.bytes), h("td", {}, fmt(k.ttl_s, 0, " s"))))))
        : h("p", { class: "muted" }, "No cached answers."),
      h("div", { class: "row" }, flush, h("button", { type: "button", class: "quiet", onclick: loadCache }, "Refresh")));
  }

  async function restore(name) {
    if (!window.confirm(`Put the files of ${name} back in the config directory? Validate and reload afterwards to serve them.`)) return;
    try {
      const result = await post(`/admin/config/backups/${encodeURIComponent(name)}/restore`, {});
      toast(`Restored ${result.restored}; validate to see the diff`);
      await runValidate();
    } catch (err) {
      toast(`Restore refused: ${err.message}`);
    }
  }

  async function runValidate() {
    reload.disabled = true;
    try {
      const v = await post("/admin/config/validate", {});
      clear(validateBox,
        h("p", { class: "ok" }, `Valid: ${v.version} (serving ${v.active_version}).`),
        h("h2", {}, "Changes if reloaded"), changeList(v.changes),
        v.changed_routes.length ? h("p", {}, `Routes that change: ${v.changed_routes.join(", ")}`) : null,
        v.warnings.length ? problemList(v.warnings) : null);
      reload.disabled = v.version === v.active_version;
      if (!reload.disabled) reload.focus();
    } catch (err) {
      const errors = (err.body && err.body.errors) || [];
      clear(validateBox, h("p", { class: "error" }, err.message), problemList(errors));
    }
  }

  async function runReload() {
    reload.disabled = true;
    try {
      const r = await post("/admin/config/reload", {});
      clear(validateBox, h("p", { class: "ok", id: "reload-result" }, `Reload ${r.status}: now serving ${r.version} (was ${r.previous_version}, ${fmt(r.duration_ms, 0, " ms")}).`), changeList(r.changes));
      await Promise.all([loadConfig(), loadProviders(), loadBackups()]);
    } catch (err) {
      clear(validateBox, h("p", { class: "error" }, err.message), problemList((err.body && err.body.errors) || []));
    }
  }

  validate.addEventListener("click", runValidate);
  reload.addEventListener("click", runReload);
  clear(main, h("h1", {}, "Operations"),
    h("section", { class: "panel", "aria-label": "Providers" }, h("div", { class: "row" }, h("h2", {}, "Providers"),
      h("button", { type: "button", class: "quiet", onclick: loadProviders }, "Refresh")), providersBox),
    h("section", { class: "panel stack", "aria-label": "Config" }, h("h2", {}, "Config"), configBox,
      h("div", { class: "row" }, validate, reload, h("span", { class: "muted" }, "Reload is enabled once validation has shown the diff.")), validateBox),
    h("section", { class: "panel", "aria-label": "Backups" }, h("h2", {}, "Backups"), backupsBox),
    h("section", { class: "panel stack", "aria-label": "Response cache" }, h("h2", {}, "Response cache"), cacheBox));
  await Promise.all([loadProviders(), loadConfig(), loadBackups(), loadCache()]);
}
