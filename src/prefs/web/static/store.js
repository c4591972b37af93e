// Store staff at a till: their store's queue of reorders and the buttons that move each one on.
// Signed in with the till's key, kept in this tab's sessionStorage only (gone when it closes).

import { announce, busy, clearMessages, fill, h, hidden, warn } from "./elements.js";
import { attributeLabel, friendlyTime, orderedAttributes } from "./words.js";

const STORAGE_KEY = "prefs.till-key";
const KEY_SHAPE = /^pos_[A-Za-z0-9_-]{20,100}$/;
const OPEN = ["requested", "accepted", "ready"];
const NEXT = {
  requested: [["accepted", "Accept"], ["declined", "Decline"]],
  accepted: [["ready", "Ready to collect"], ["declined", "Decline"]],
  ready: [["collected", "Handed over"], ["declined", "Decline"]],
};
const POLL_SECONDS = 15;
const STATES = { requested: "New — accept it to start", accepted: "Accepted — being prepared", ready: "Ready — waiting for the customer", collected: "Collected", declined: "Declined" };

const view = () => document.getElementById("view");
const signOutButton = () => document.getElementById("sign-out");
let tillKey = null;
let cursor = null;
let timer = null;
const reorders = new Map(); // id → the latest change the queue showed, with its item kept

const orderNumber = (id) => id.slice(0, 8).toUpperCase();

function storedKey() {
  try { return window.sessionStorage.getItem(STORAGE_KEY); } catch { return null; }
}

function keep(key) {
  tillKey = key;
  try { window.sessionStorage.setItem(STORAGE_KEY, key); } catch { /* memory only */ }
}

function signOut(message) {
  tillKey = null;
  cursor = null;
  reorders.clear();
  if (timer !== null) window.clearInterval(timer);
  timer = null;
  try { window.sessionStorage.removeItem(STORAGE_KEY); } catch { /* nothing kept */ }
  showSignIn(message);
}

async function call(method, path, body) {
  const init = {
    method,
    headers: { Accept: "application/json", Authorization: `Bearer ${tillKey}` },
    cache: "no-store",
    credentials: "omit",
    referrerPolicy: "no-referrer",
  };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw { status: 0, detail: "The service could not be reached. Check the connection and try again." };
  }
  const answer = await response.json().catch(() => ({}));
  if (response.status === 401) signOut("That till key is not accepted (unknown or revoked).");
  if (!response.ok) throw { status: response.status, detail: answer.detail || response.statusText };
  return answer;
}

/** Every change since the last poll; the queue's cursor is kept for the next. */
async function poll() {
  for (;;) {
    const page = await call("GET", `/v1/pos/reorders?limit=200${cursor ? `&after=${encodeURIComponent(cursor)}` : ""}`);
    for (const change of page.items) {
      const known = reorders.get(change.id);
      reorders.set(change.id, { ...change, item: change.item || (OPEN.includes(change.state) ? known?.item : null) });
    }
    cursor = page.next;
    if (!page.items.length) return;
  }
}

function describe(reorder) {
  const item = reorder.item || {};
  const sizes = orderedAttributes(item.attributes || {}).map(([name, value]) => `${attributeLabel(name)} ${value}`).join(", ");
  // a product a customer typed from memory may have no code: the brand still shows
  const about = [item.product?.sku ? `Code ${item.product.sku}` : null, item.product?.brand].filter(Boolean).join(" · ");
  return [
    h("h2", null, `${reorder.quantity} × ${item.product?.name || "An item"}`,
      h("span", { class: "meta" }, ` · order ${orderNumber(reorder.id)}`)),
    h("p", null, h("span", { class: `badge badge-${reorder.state}` }, STATES[reorder.state] || reorder.state)),
    sizes ? h("p", null, sizes) : null,
    about ? h("p", { class: "meta" }, about) : null,
    item.note ? h("p", { class: "note" }, `“${item.note}”`) : null,
    h("time", { datetime: reorder.created_at }, `Asked ${friendlyTime(reorder.created_at)}`),
  ];
}

function draw() {
  const open = [...reorders.values()].filter((r) => OPEN.includes(r.state))
    .sort((a, b) => a.created_at.localeCompare(b.created_at));
  const list = h("ol", { class: "plain-list", id: "store-queue", "aria-labelledby": "queue-heading" });
  fill(list, open.length ? open.map((reorder) => {
    const buttons = NEXT[reorder.state].map(([state, label]) => {
      const button = h("button", { type: "button", class: state === "declined" ? "button-quiet button-small" : "button-small" },
        label, hidden(` order ${orderNumber(reorder.id)}`));
      button.addEventListener("click", () => busy(button, () => move(reorder, state, label)));
      return button;
    });
    return h("li", { class: "card reorder", id: `order-${reorder.id}` }, ...describe(reorder),
      h("div", { class: "actions" }, buttons));
  }) : h("li", { class: "card empty" }, "Nothing to do: no open reorders for this store."));
  const check = h("button", { type: "button", class: "button-quiet", id: "check-queue" }, "Check for new reorders");
  check.addEventListener("click", () => busy(check, refresh));
  fill(view(),
    h("div", { class: "view-head" }, h("h1", { id: "queue-heading", tabindex: "-1" }, "Reorders for this store")),
    h("p", { class: "lead" }, "Open reorders, oldest first. Accept one to start on it, mark it ready when it can be collected, ",
      "and hand it over when the customer shows its order number."),
    h("div", { class: "actions" }, check),
    list);
}

async function move(reorder, state, label) {
  clearMessages();
  try {
    await call("POST", `/v1/pos/reorders/${reorder.id}/status`, { state });
  } catch (error) {
    warn(`Not changed: ${error.detail}`);
    await refresh();
    return;
  }
  await refresh();
  announce(`Order ${orderNumber(reorder.id)}: ${STATES[state] || label}.`);
  document.getElementById("check-queue")?.focus();
}

async function refresh() {
  try {
    await poll();
  } catch (error) {
    if (tillKey !== null) warn(`The queue could not be read: ${error.detail}`);
    return;
  }
  if (tillKey !== null) draw();
}

function showSignIn(message) {
  signOutButton().hidden = true;
  const input = h("input", { type: "password", id: "till-key", autocomplete: "off", "aria-describedby": "till-key-hint" });
  const open = h("button", { type: "submit" }, "Open the queue");
  const form = h("form", { class: "card", novalidate: true, "aria-labelledby": "sign-in-heading" },
    h("div", { class: "field" }, h("label", { for: "till-key" }, "Till key"), input,
      h("p", { class: "hint", id: "till-key-hint" }, "The pos_ key of one of this store's tills. Kept in this tab only.")),
    h("div", { class: "actions" }, open));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!KEY_SHAPE.test(key)) {
      input.setAttribute("aria-invalid", "true");
      warn("That is not a till key: it starts with pos_.");
      input.focus();
      return;
    }
    clearMessages();
    busy(open, () => start(key));
  });
  fill(view(), h("h1", { id: "sign-in-heading", tabindex: "-1" }, "Store reorders"), form);
  if (message) warn(message);
  input.focus();
}

async function start(key) {
  keep(key);
  signOutButton().hidden = false;
  await refresh();
  if (tillKey === null) return;
  document.getElementById("queue-heading")?.focus();
  timer = window.setInterval(refresh, POLL_SECONDS * 1000);
}

signOutButton().addEventListener("click", () => signOut());
const kept = storedKey();
if (kept && KEY_SHAPE.test(kept)) start(kept);
else showSignIn();
