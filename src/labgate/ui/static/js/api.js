// Talking to the gateway: its base URL (this origin, or the --gateway of `labgate ui`), the key kept in
// sessionStorage for this tab only, error envelopes turned into exceptions with the gateway's message.

const KEY_SLOT = "labgate.key";
let base = "";

export async function configure() {
  try {
    const answer = await fetch("config.json", { cache: "no-store" });
    if (answer.ok) base = (await answer.json()).gateway || "";
  } catch {
    base = "";
  }
  return base;
}

export const gatewayUrl = () => base || window.location.origin;
export const baseUrl = () => base;
export const getKey = () => sessionStorage.getItem(KEY_SLOT) || "";
export const setKey = (key) => (key ? sessionStorage.setItem(KEY_SLOT, key) : sessionStorage.removeItem(KEY_SLOT));

export class ApiError extends Error {
  constructor(status, body, requestId) {
    const err = body && body.error ? body.error : {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.body = body;
    this.code = err.code;
    this.param = err.param;
    this.requestId = requestId;
  }
}

const listeners = new Set();
export const onAuthNeeded = (fn) => listeners.add(fn);

export function headers(extra = {}) {
  const out = { ...extra };
  const key = getKey();
  if (key) out.authorization = `Bearer ${key}`;
  return out;
}

// fetch with the key; a 401 asks the shell for a key (once) and retries
export async function request(path, { method = "GET", body, raw = false, signal, retried = false } = {}) {
  const init = { method, signal, headers: headers(body !== undefined ? { "content-type": "application/json" } : {}) };
  if (body !== undefined) init.body = typeof body === "string" ? body : JSON.stringify(body);
  const answer = await fetch(base + path, init);
  if (!answer.ok) {
    let parsed = null;
    try { parsed = await answer.json(); } catch { /* not JSON */ }
    const err = new ApiError(answer.status, parsed, answer.headers.get("x-request-id"));
    if (answer.status === 401 && !retried) {
      // the dialog says why: a missing or wrong key, or a virtual key on an admin route
      for (const fn of listeners) if (await fn(err.message)) return request(path, { method, body, raw, signal, retried: true });
    }
    throw err;
  }
  if (raw) return answer;
  return answer.json();
}

export const get = (path, opts) => request(path, opts);
export const post = (path, body, opts = {}) => request(path, { ...opts, method: "POST", body });

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

// The record of a request, once the history writer has it (the answer goes out before it is written).
export async function record(requestId, { tries = 10, delayMs = 300 } = {}) {
  for (let i = 0; i < tries; i += 1) {
    try {
      // no key prompt here: a user with an ordinary key sees "n/a", not a dialog asking for the master key
      return await request(`/admin/history/${encodeURIComponent(requestId)}`, { retried: true });
    } catch (err) {
      if (err.status !== 404) throw err;
    }
    await new Promise((r) => setTimeout(r, delayMs));
  }
  return null;
}
