// The shell: hash routes → pages, the key dialog, keyboard focus on page change.
import { configure, getKey, onAuthNeeded, setKey } from "./api.js";
import { clear, h } from "./dom.js";

const pages = {
  playground: () => import("./playground.js"),
  compare: () => import("./compare.js"),
  history: () => import("./history.js"),
  analytics: () => import("./analytics.js"),
  operations: () => import("./operations.js"),
  access: () => import("./access.js"),
};

const main = document.getElementById("main");
const dialog = document.getElementById("key-dialog");
const input = document.getElementById("key-input");
const reason = document.getElementById("key-reason");
let current = null;
let routed = false;

// Ask for a key, saying why the last one was refused (a virtual key on an admin page); resolves true when one
// was given.
function askKey(why = "") {
  return new Promise((resolve) => {
    input.value = getKey();
    reason.textContent = why;
    reason.hidden = !why;
    const done = () => {
      dialog.removeEventListener("close", done);
      if (dialog.returnValue === "save" && input.value.trim()) {
        setKey(input.value.trim());
        resolve(true);
      } else resolve(false);
    };
    dialog.addEventListener("close", done);
    dialog.returnValue = "";
    if (!dialog.open) dialog.showModal();
    input.focus();
  });
}

let asking = null;
onAuthNeeded((why) => {
  asking = asking || askKey(why).finally(() => { asking = null; });
  return asking;
});

document.getElementById("key-button").addEventListener("click", () => askKey("").then((ok) => ok && route()));
document.getElementById("key-forget").addEventListener("click", () => {
  setKey("");
  input.value = "";
  dialog.close("forget");
});

async function route() {
  const name = (window.location.hash.match(/^#\/(\w+)/) || [])[1] || "playground";
  const load = pages[name] || pages.playground;
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.page === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (current && current.leave) current.leave();
  const module = await load();
  clear(main, h("p", { class: "muted" }, "Loading…"));
  current = module;
  try {
    await module.render(main);
  } catch (err) {
    clear(main, h("h1", {}, "Something went wrong"), h("p", { class: "error" }, err.message || String(err)));
  }
  document.title = `labgate · ${name}`;
  if (routed) main.focus({ preventScroll: true }); // after a page change; the first load starts at the top
  routed = true;
}

window.addEventListener("hashchange", route);
await configure();
route();
