// Building the page safely (text is always text, never parsed as HTML), messages and confirmation.

/** h("button", {class: "x", onclick: fn}, "Save") — attributes, event handlers and children. */
export function h(tag, props, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") element.className = value;
    else if (name.startsWith("on") && typeof value === "function") {
      element.addEventListener(name.slice(2), value);
    } else if (name === "value" && (tag === "input" || tag === "textarea" || tag === "select")) {
      element.value = value;
      if (tag === "input") element.setAttribute("value", value);
    } else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  append(element, children);
  return element;
}

export function append(parent, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

/** Replace everything inside ``parent``. */
export function fill(parent, ...children) {
  parent.replaceChildren();
  return append(parent, children);
}

/** Hand ``blob`` to the browser as a download named ``filename`` (no page change, no new tab). */
export function saveFile(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: filename, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  window.setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** Text only a screen reader reads (e.g. which preference a short button is about). */
export const hidden = (text) => h("span", { class: "visually-hidden" }, text);

let uniqueCounter = 0;
export const uniqueId = (prefix) => `${prefix}-${++uniqueCounter}`;

// --- messages ---------------------------------------------------------------------------------

const statusRegion = () => document.getElementById("status");
const alertRegion = () => document.getElementById("alert");

/** A polite message in the live region ("Saved."). */
export function announce(text) {
  alertRegion().replaceChildren();
  const region = statusRegion();
  region.replaceChildren();
  // A new text node after a tick, so the same words said twice are read twice.
  window.setTimeout(() => { region.textContent = text; }, 30);
}

/** An urgent message ("Not saved: …"), with a list of details if any. */
export function warn(text, details = []) {
  statusRegion().replaceChildren();
  const region = alertRegion();
  fill(region, h("p", { class: "message-title" }, text));
  if (details.length) region.append(h("ul", null, details.map((d) => h("li", null, d))));
}

export function clearMessages() {
  statusRegion().replaceChildren();
  alertRegion().replaceChildren();
}

/** Show what went wrong with a request in words; field errors are listed. */
export function warnAbout(error, what = "That did not work") {
  const details = (error.fieldErrors || [])
    .map((e) => [e.key, e.message].filter(Boolean).join(": "))
    .filter(Boolean);
  warn(`${what}: ${error.sentence || error.message}`, details);
}

// --- confirmation -------------------------------------------------------------------------------

/** Ask in a modal dialog; resolves true only when the person chose ``yes``. */
export function confirmAction({ title, text, yes, no = "Cancel" }) {
  const dialog = document.getElementById("confirm");
  const returnTo = document.activeElement;
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-yes").textContent = yes;
  document.getElementById("confirm-no").textContent = no;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (returnTo instanceof HTMLElement && returnTo.isConnected) returnTo.focus();
      resolve(dialog.returnValue === "yes");
    }, { once: true });
    dialog.showModal();
    document.getElementById("confirm-no").focus();
  });
}

/** Run ``action`` with ``button`` busy, so a second press does not send twice. */
export async function busy(button, action) {
  if (button.getAttribute("aria-disabled") === "true") return undefined;
  button.setAttribute("aria-disabled", "true");
  try {
    return await action();
  } finally {
    button.removeAttribute("aria-disabled");
  }
}
