// Moving between pages with something to hand over (a record to replay, …), kept for this tab.

export function go(page, state) {
  sessionStorage.setItem(`labgate.handoff.${page}`, JSON.stringify(state || null));
  window.location.hash = `#/${page}`;
}

export function handoff(page) {
  const slot = `labgate.handoff.${page}`;
  const value = sessionStorage.getItem(slot);
  sessionStorage.removeItem(slot);
  return value ? JSON.parse(value) : null;
}
