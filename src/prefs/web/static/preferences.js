// My preferences: the list in the customer's own order; add, edit, move, delete, reorder.

import * as api from "./api.js";
import {
  announce, busy, clearMessages, confirmAction, fill, h, hidden, uniqueId, warn, warnAbout,
} from "./elements.js";
import {
  FIELD_SHORT, SIZE_ATTRIBUTES, attributeLabel, attributeName, friendlyDate, listWords, orderedAttributes,
  plural, productMeta, whoMaySee,
} from "./words.js";

const ATTRIBUTE_NAME = /^[a-z][a-z0-9_]*$/;
const FIT_CHOICES = ["slim", "regular", "relaxed", "tall", "short"];

let items = [];
let partners = [];
let consents = [];
let list = null;
let addPanel = null;

export async function show(root) {
  [items, partners, consents] = await Promise.all([
    api.get("/v1/me/preferences").then((answer) => answer.items),
    api.get("/v1/partners").then((answer) => answer.items),
    api.get("/v1/me/consents").then((answer) => answer.items),
  ]);
  const addButton = h("button", { type: "button", id: "add-preference", "aria-expanded": "false",
    "aria-controls": "add-panel" }, "Add a preference");
  addPanel = h("div", { id: "add-panel", hidden: true });
  addButton.addEventListener("click", () => {
    const opening = addPanel.hidden;
    addButton.setAttribute("aria-expanded", String(opening));
    addPanel.hidden = !opening;
    if (opening) {
      fill(addPanel, preferenceForm({
        legend: "Add a preference",
        opener: "add-preference",
        onCancel: () => { addPanel.hidden = true; addButton.setAttribute("aria-expanded", "false"); addButton.focus(); },
        onSave: add,
      }));
      addPanel.querySelector("input").focus();
    }
  });
  list = h("ol", { class: "plain-list", id: "preference-list", "aria-labelledby": "preferences-heading" });
  fill(root,
    h("div", { class: "view-head" },
      h("h1", { id: "preferences-heading", tabindex: "-1" }, "My preferences"),
      addButton),
    h("p", { class: "lead" }, "The things you buy again, in your own order: the first is the one that matters most."),
    addPanel,
    list);
  drawList();
}

async function reload() {
  items = (await api.get("/v1/me/preferences")).items;
  drawList();
}

/** Whether the shop's catalogue knows the product: then its status is the shop's, not the
 * customer's to change. */
const catalogueKnows = (preference) => preference.status_source === "catalogue";

/** Focus a card's button, opening the card's "More" menu first if the button is in it. */
function focusButton(id) {
  const button = document.getElementById(id);
  const menu = button?.closest(".more-menu");
  if (menu?.hidden) setMenu(menu, true);
  button?.focus();
}

function drawList() {
  if (!items.length) {
    fill(list, h("li", { class: "card empty" }, "You keep no preferences yet. Add the first one with “Add a preference”."));
    return;
  }
  fill(list, items.map((preference, index) => preferenceCard(preference, index)));
}

function summary(preference, headingLevel = "h2") {
  const { product } = preference;
  const title = h(headingLevel, { id: headingLevel === "h2" ? `title-${preference.id}` : null }, product.name);
  if (preference.status === "discontinued") {
    title.append(" ", h("span", { class: "badge badge-discontinued" }, "Discontinued"));
  }
  const meta = productMeta(product);
  const details = orderedAttributes(preference.attributes);
  const bought = preference.purchases
    ? `Bought ${plural(preference.purchases, "time")}${preference.last_purchased_on ? `, last on ${friendlyDate(preference.last_purchased_on)}` : ""}.`
    : null;
  return [
    h("div", { class: "preference-title" }, title, meta ? h("p", { class: "meta" }, meta) : null),
    details.length
      ? h("ul", { class: "details-list", "aria-label": `Sizes and details of ${product.name}` },
        details.map(([name, value]) => h("li", null, h("span", { class: "detail-name" }, `${attributeLabel(name)}: `), value)))
      : null,
    preference.note ? h("p", { class: "note" }, preference.note) : null,
    bought ? h("p", { class: "meta" }, bought) : null,
    preference.source
      ? h("p", { class: "meta source" }, `Added by a till: bought at store ${preference.source.store} on ${friendlyDate(preference.source.purchased_on)}.`)
      : null,
  ];
}

/** Who may see this preference, from the consents in force (tills and partners). */
function sharedWith(preference) {
  const seeing = whoMaySee(preference, consents);
  const who = seeing.length
    ? listWords(seeing.map((w) => `${w.name} (${w.fields.map((f) => FIELD_SHORT[f] || f).join(", ")})`))
    : "nobody but you";
  return h("p", { class: "meta shared-with", id: `shared-${preference.id}` },
    h("span", { class: "shared-label" }, "Who may see it: "), `${who}. `,
    h("a", { href: "#sharing" }, seeing.length ? "Change" : "Share it", hidden(` — ${preference.product.name}`)));
}

/** Open or close a card's "More" menu (a disclosure: a button and the list it shows). */
function setMenu(menu, open) {
  menu.hidden = !open;
  document.querySelector(`[aria-controls="${menu.id}"]`)?.setAttribute("aria-expanded", String(open));
}

/** The card's less frequent actions behind one button, operable by keyboard: Enter or Space
 * opens it, the arrow keys move through it, Escape closes it and returns to the button. */
function moreMenu(preference, index) {
  const name = preference.product.name;
  const menuId = `more-menu-${preference.id}`;
  const opener = h("button", { type: "button", class: "button-quiet button-small more-button", id: `more-${preference.id}`,
    "aria-expanded": "false", "aria-controls": menuId },
  "More", hidden(` actions for ${name}`), h("span", { class: "chevron", "aria-hidden": "true" }, "▾"));
  const item = (button) => h("li", null, button);
  const up = h("button", { type: "button", class: "menu-item", id: `up-${preference.id}`, disabled: index === 0 },
    h("span", { "aria-hidden": "true" }, "↑ "), "Move up", hidden(` — ${name}`));
  const down = h("button", { type: "button", class: "menu-item", id: `down-${preference.id}`, disabled: index === items.length - 1 },
    h("span", { "aria-hidden": "true" }, "↓ "), "Move down", hidden(` — ${name}`));
  up.addEventListener("click", () => busy(up, () => move(preference, -1)));
  down.addEventListener("click", () => busy(down, () => move(preference, +1)));
  let status = null;
  if (!catalogueKnows(preference)) {
    const discontinued = preference.status === "discontinued";
    status = h("button", { type: "button", class: "menu-item", id: `status-${preference.id}` },
      discontinued ? "Mark available again" : "Mark discontinued", hidden(` — ${name}`));
    status.addEventListener("click", () => busy(status, () => setStatus(preference, discontinued ? "available" : "discontinued")));
  }
  const remove = h("button", { type: "button", class: "menu-item menu-item-danger", id: `delete-${preference.id}` }, "Delete", hidden(` ${name}`));
  remove.addEventListener("click", () => busy(remove, () => removePreference(preference)));
  const menu = h("ul", { class: "more-menu", id: menuId, hidden: true, "aria-label": `More actions for ${name}` },
    item(up), item(down), status ? item(status) : null, item(remove));
  opener.addEventListener("click", () => {
    const opening = menu.hidden;
    setMenu(menu, opening);
    if (opening) menu.querySelector("button:not(:disabled)")?.focus();
  });
  menu.addEventListener("keydown", (event) => {
    const buttons = [...menu.querySelectorAll("button:not(:disabled)")];
    const at = buttons.indexOf(document.activeElement);
    if (event.key === "Escape") {
      event.preventDefault();
      setMenu(menu, false);
      opener.focus();
    } else if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      const step = event.key === "ArrowDown" ? 1 : -1;
      buttons[(at + step + buttons.length) % buttons.length]?.focus();
    } else if (event.key === "Home" || event.key === "End") {
      event.preventDefault();
      buttons[event.key === "Home" ? 0 : buttons.length - 1]?.focus();
    }
  });
  return { opener, menu };
}

function preferenceCard(preference, index) {
  const name = preference.product.name;
  const card = h("li", { class: "card preference", id: `preference-${preference.id}`,
    "aria-labelledby": `title-${preference.id}` });
  const [title, ...rest] = summary(preference);
  const panel = h("div", { class: "panel" });
  const edit = h("button", { type: "button", class: "button-quiet button-small", id: `edit-${preference.id}` }, "Edit", hidden(` ${name}`));
  edit.addEventListener("click", () => openEdit(preference, panel));
  const reorder = h("button", { type: "button", class: "button-small", id: `reorder-${preference.id}` }, "Reorder", hidden(` ${name}`));
  reorder.addEventListener("click", () => openReorder(preference, panel));
  const more = moreMenu(preference, index);
  card.append(
    h("div", { class: "preference-head" },
      h("span", { class: "rank" }, hidden("Position "), String(preference.rank)),
      title),
    ...rest.filter(Boolean),
    sharedWith(preference),
    h("div", { class: "actions card-actions" }, reorder, edit, more.opener),
    more.menu,
    panel);
  return card;
}

// --- changes --------------------------------------------------------------------------------

async function stale(preference, error) {
  await reload();
  const current = items.find((p) => p.id === preference.id);
  warn(current
    ? `Not saved: ${preference.product.name} was changed elsewhere (perhaps in another tab). The list now shows the current version; try again if you still want the change.`
    : `Not saved: ${preference.product.name} was deleted elsewhere.`);
  return error;
}

async function move(preference, step) {
  clearMessages();
  const rank = preference.rank + step;
  try {
    await api.patch(`/v1/me/preferences/${preference.id}`, { rank }, api.ifMatch(preference.version));
  } catch (error) {
    if (error.status === 412) return stale(preference, error);
    warnAbout(error, "Could not move it");
    return error;
  }
  await reload();
  const direction = step < 0 ? "up" : "down";
  const moved = items.findIndex((p) => p.id === preference.id);
  const same = document.getElementById(`${direction}-${preference.id}`);
  const focusId = same && !same.disabled ? same.id : `${direction === "up" ? "down" : "up"}-${preference.id}`;
  focusButton(focusId);
  announce(`${preference.product.name} moved ${direction}, to position ${moved + 1} of ${items.length}.`);
  return null;
}

async function setStatus(preference, status) {
  clearMessages();
  try {
    await api.patch(`/v1/me/preferences/${preference.id}`, { status }, api.ifMatch(preference.version));
  } catch (error) {
    if (error.status === 412) return stale(preference, error);
    if (error.status === 409) await reload(); // the catalogue has come to know it meanwhile
    warnAbout(error, "Could not change it");
    return error;
  }
  await reload();
  focusButton(`status-${preference.id}`);
  announce(status === "discontinued"
    ? `${preference.product.name} is marked discontinued.`
    : `${preference.product.name} is marked available again.`);
  return null;
}

async function removePreference(preference) {
  const sure = await confirmAction({
    title: `Delete ${preference.product.name}?`,
    text: "It leaves your locker for good, and nobody can see it any more. This cannot be undone.",
    yes: "Delete",
    no: "Keep it",
  });
  if (!sure) return;
  clearMessages();
  const position = items.findIndex((p) => p.id === preference.id);
  try {
    await api.del(`/v1/me/preferences/${preference.id}`, api.ifMatch(preference.version));
  } catch (error) {
    if (error.status === 412) { await stale(preference, error); return; }
    warnAbout(error, "Could not delete it");
    return;
  }
  await reload();
  const next = items[Math.min(position, items.length - 1)];
  document.getElementById(next ? `edit-${next.id}` : "add-preference")?.focus();
  announce(`${preference.product.name} is deleted.`);
}

async function add(body, form) {
  try {
    const created = await api.post("/v1/me/preferences", body);
    addPanel.hidden = true;
    document.getElementById("add-preference").setAttribute("aria-expanded", "false");
    await reload();
    document.getElementById(`edit-${created.id}`)?.focus();
    announce(`${created.product.name} is added to your preferences.`);
  } catch (error) {
    warnAbout(error, "Not saved");
    form.querySelector("input")?.focus();
  }
}

/** The form's whole state as a merge patch of ``stored`` (PATCH merges attributes member by
 * member, RFC 7396): the details the customer removed are sent as null, so they go. */
function replacing(body, stored) {
  const removed = Object.keys(stored.attributes || {}).filter((name) => !(name in body.attributes));
  return { ...body, attributes: { ...Object.fromEntries(removed.map((name) => [name, null])), ...body.attributes } };
}

function openEdit(preference, panel) {
  clearMessages();
  const close = () => { panel.replaceChildren(); document.getElementById(`edit-${preference.id}`)?.focus(); };
  const save = async (body, form, version = preference.version) => {
    try {
      const saved = await api.patch(`/v1/me/preferences/${preference.id}`, replacing(body, preference), api.ifMatch(version));
      await reload();
      document.getElementById(`edit-${saved.id}`)?.focus();
      announce(`Your changes to ${saved.product.name} are saved.`);
    } catch (error) {
      if (error.status === 412) {
        await showConflict(preference, panel, body);
        return;
      }
      warnAbout(error, "Not saved");
      form.querySelector("input")?.focus();
    }
  };
  fill(panel, preferenceForm({ legend: `Edit ${preference.product.name}`, opener: `edit-${preference.id}`,
    preference, onCancel: close, onSave: save }));
  panel.querySelector("input").focus();
}

/** A 412: say so, show the version now stored, and let the customer choose. Nothing is overwritten. */
async function showConflict(preference, panel, draft) {
  let current;
  try {
    current = await api.get(`/v1/me/preferences/${preference.id}`);
  } catch (error) {
    if (error.status === 404) {
      warn(`Not saved: ${preference.product.name} was deleted elsewhere.`);
      await reload();
      return;
    }
    warnAbout(error, "Not saved");
    return;
  }
  const headingId = uniqueId("conflict");
  const editCurrent = h("button", { type: "button" }, "Edit the current version");
  const keepMine = h("button", { type: "button", class: "button-quiet" }, "Save my changes over it");
  const box = h("div", { class: "conflict", role: "group", "aria-labelledby": headingId },
    h("h3", { id: headingId, tabindex: "-1" }, "Not saved: this preference changed elsewhere"),
    h("p", null, `${preference.product.name} was changed (perhaps in another tab or on another device) after you started editing, so your changes were not saved. This is the version stored now (version ${current.version}):`),
    h("div", { class: "card current-version" }, summary(current, "h4")),
    h("p", null, "Your changes are still in the form below."),
    h("div", { class: "actions" }, editCurrent, keepMine));
  const form = panel.querySelector("form");
  panel.insertBefore(box, form);
  warn(`Not saved: ${preference.product.name} was changed elsewhere. The current version is shown.`);
  editCurrent.addEventListener("click", () => {
    const updated = { ...preference, ...current };
    items = items.map((p) => (p.id === updated.id ? updated : p));
    openEdit(updated, panel);
  });
  keepMine.addEventListener("click", () => busy(keepMine, async () => {
    box.remove();
    clearMessages();
    const response = await api.patch(`/v1/me/preferences/${preference.id}`, replacing(draft, current), api.ifMatch(current.version))
      .catch((error) => error);
    if (response instanceof api.ApiError) {
      if (response.status === 412) await showConflict(preference, panel, draft);
      else warnAbout(response, "Not saved");
      return;
    }
    await reload();
    document.getElementById(`edit-${preference.id}`)?.focus();
    announce(`Your changes to ${response.product.name} are saved.`);
  }));
  box.querySelector("h3").focus();
}

// --- the form ---------------------------------------------------------------------------------

function textField({ id, label, value = "", hint = null, required = false, maxlength = 200, list = null }) {
  const input = h("input", { type: "text", id, name: id, value, maxlength, list,
    "aria-required": required ? "true" : null, "aria-describedby": hint ? `${id}-hint` : null });
  return h("div", { class: "field" },
    h("label", { for: id }, label, required ? " (required)" : ""),
    hint ? h("span", { class: "hint", id: `${id}-hint` }, hint) : null,
    input);
}

function freeDetailRow(prefix, name = "", value = "") {
  const id = uniqueId(`${prefix}-detail`);
  const remove = h("button", { type: "button", class: "button-quiet button-small" }, "Remove", hidden(" this detail"));
  const row = h("div", { class: "free-detail" },
    h("div", { class: "field" }, h("label", { for: `${id}-name` }, "Detail"),
      h("input", { type: "text", id: `${id}-name`, class: "detail-name-input", value: name ? attributeLabel(name) : "", maxlength: 40 })),
    h("div", { class: "field" }, h("label", { for: `${id}-value` }, "Value"),
      h("input", { type: "text", id: `${id}-value`, class: "detail-value-input", value, maxlength: 200 })),
    remove);
  remove.addEventListener("click", () => {
    const container = row.parentElement;
    row.remove();
    container.closest("fieldset").querySelector("button.add-detail").focus();
  });
  return row;
}

/** The add/edit form; ``onSave(body, form)`` gets the body for POST or PATCH. */
function preferenceForm({ legend, opener, preference = null, onCancel, onSave }) {
  const prefix = uniqueId("pref");
  const product = preference?.product || {};
  const attributes = preference?.attributes || {};
  const fitList = `${prefix}-fits`;
  const freeRows = h("div", { class: "free-details" },
    Object.entries(attributes).filter(([n]) => !SIZE_ATTRIBUTES.includes(n)).map(([n, v]) => freeDetailRow(prefix, n, v)));
  const addDetail = h("button", { type: "button", class: "button-quiet button-small add-detail" }, "Add another detail");
  addDetail.addEventListener("click", () => {
    const row = freeDetailRow(prefix);
    freeRows.append(row);
    row.querySelector("input").focus();
  });
  // the status is the customer's to set only for a product the shop's catalogue does not know
  const ownStatus = !(preference && catalogueKnows(preference));
  const discontinued = ownStatus
    ? h("input", { type: "checkbox", id: `${prefix}-discontinued`, checked: preference?.status === "discontinued" })
    : null;
  const note = h("textarea", { id: `${prefix}-note`, maxlength: 2000, rows: 3, "aria-describedby": `${prefix}-note-hint` });
  note.value = preference?.note || "";
  const save = h("button", { type: "submit" }, preference ? "Save changes" : "Save preference");
  const cancel = h("button", { type: "button", class: "button-quiet" }, "Cancel");
  cancel.addEventListener("click", onCancel);
  // data-opener: the button that opens this form again after a trip through sign-in (draft.js)
  const form = h("form", { class: "card preference-form", novalidate: true, "aria-label": legend, "data-opener": opener },
    h("h2", null, legend),
    preference ? null : catalogueSearch(prefix, () => form),
    h("fieldset", null, h("legend", null, "The product"),
      h("div", { class: "grid grid-2" },
        textField({ id: `${prefix}-name`, label: "Product name", value: product.name || "", required: true }),
        textField({ id: `${prefix}-sku`, label: "Product code (SKU)", value: product.sku || "", maxlength: 64,
          hint: "On the label or the receipt, if you have it." }),
        textField({ id: `${prefix}-brand`, label: "Brand", value: product.brand || "", maxlength: 100 }),
        textField({ id: `${prefix}-category`, label: "Category", value: product.category || "", maxlength: 100,
          hint: "For example trousers, shirts, shoes." }))),
    h("fieldset", null, h("legend", null, "Size and fit"),
      h("div", { class: "grid grid-3" },
        textField({ id: `${prefix}-waist`, label: "Waist", value: attributes.waist || "" }),
        textField({ id: `${prefix}-leg`, label: "Leg", value: attributes.leg || "" }),
        textField({ id: `${prefix}-size`, label: "Size", value: attributes.size || "" }),
        textField({ id: `${prefix}-colour`, label: "Colour", value: attributes.colour || "" }),
        textField({ id: `${prefix}-fit`, label: "Fit", value: attributes.fit || "", list: fitList })),
      h("datalist", { id: fitList }, FIT_CHOICES.map((fit) => h("option", { value: fit })))),
    h("fieldset", null, h("legend", null, "Other details"),
      h("p", { class: "hint" }, "Anything else that makes it fit: collar, sleeve, width, fabric…"),
      freeRows, addDetail),
    h("div", { class: "field" },
      h("label", { for: `${prefix}-note` }, "Note"),
      h("span", { class: "hint", id: `${prefix}-note-hint` }, "In your own words. Only shared where you allow notes."),
      note),
    ownStatus
      ? h("div", { class: "check" }, discontinued,
        h("label", { for: `${prefix}-discontinued` }, "The shop no longer sells it (discontinued)",
          h("span", { class: "hint", id: `${prefix}-discontinued-hint` })))
      : h("p", { class: "hint catalogue-status" }, preference.status === "discontinued"
        ? "The shop's catalogue says it is discontinued: the shop keeps that up to date."
        : "The shop's catalogue says it is still sold: the shop keeps that up to date."),
    h("div", { class: "actions" }, save, cancel));

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const body = readForm(form, prefix, freeRows, discontinued, note);
    if (body === null) return;
    busy(save, () => onSave(body, form));
  });
  return form;
}

/** Find the product in the shop's catalogue: type a word or a code, pick it, then the size. */
function catalogueSearch(prefix, formOf) {
  const id = `${prefix}-find`;
  const input = h("input", { type: "search", id, autocomplete: "off", maxlength: 100,
    "aria-describedby": `${id}-hint`, "aria-controls": `${id}-results` });
  const status = h("p", { class: "hint", id: `${id}-status`, role: "status" });
  const results = h("ul", { class: "plain-list catalogue-results", id: `${id}-results` });
  let timer = null;
  let asked = 0;
  const pick = (product) => {
    const form = formOf();
    const set = (suffix, value) => { form.querySelector(`#${prefix}-${suffix}`).value = value || ""; };
    set("name", product.name);
    set("sku", product.sku);
    set("brand", product.brand);
    set("category", product.category);
    // the catalogue's product: its status is the shop's, shown but not the customer's to set,
    // until the code is changed to one the catalogue may not know
    const status = form.querySelector(`#${prefix}-discontinued`);
    status.checked = product.status === "discontinued";
    status.disabled = true;
    form.querySelector(`#${prefix}-discontinued-hint`).textContent = " — the shop's catalogue says so, and keeps it up to date.";
    form.querySelector(`#${prefix}-sku`).addEventListener("input", () => {
      status.disabled = false;
      form.querySelector(`#${prefix}-discontinued-hint`).textContent = "";
    }, { once: true });
    // the sizes the product comes in, offered as choices for each size field
    for (const name of SIZE_ATTRIBUTES) {
      const field = form.querySelector(`#${prefix}-${name}`);
      const choices = product.attributes[name];
      if (!field || !choices) continue;
      const listId = `${prefix}-${name}-choices`;
      form.querySelector(`#${listId}`)?.remove();
      field.after(h("datalist", { id: listId }, choices.map((value) => h("option", { value }))));
      field.setAttribute("list", listId);
    }
    fill(results);
    status.textContent = `${product.name} (code ${product.sku}) is filled in. Now choose the size.`;
    const firstSize = SIZE_ATTRIBUTES.map((n) => form.querySelector(`#${prefix}-${n}`))
      .find((field, i) => field && product.attributes[SIZE_ATTRIBUTES[i]]);
    (firstSize || form.querySelector(`#${prefix}-waist`)).focus();
  };
  const search = async () => {
    const words = input.value.trim();
    const mine = ++asked;
    if (words.length < 2) { fill(results); status.textContent = ""; return; }
    let page;
    try {
      page = await api.get(`/v1/catalogue/products?limit=8&q=${encodeURIComponent(words)}`);
    } catch (error) {
      if (mine === asked) status.textContent = "The catalogue cannot be searched right now; type the product in below.";
      return;
    }
    if (mine !== asked) return; // a later search has been sent
    status.textContent = page.items.length
      ? `${plural(page.items.length, "product")} found${page.next ? " (type more to narrow it down)" : ""}.`
      : "Nothing found. Type the product in below.";
    fill(results, page.items.map((product) => {
      const about = [product.brand, product.sku ? `code ${product.sku}` : null, product.status === "discontinued" ? "discontinued" : null]
        .filter(Boolean).join(" · ");
      const choose = h("button", { type: "button", class: "button-quiet catalogue-pick" },
        product.name, h("span", { class: "meta" }, ` — ${about}`));
      choose.addEventListener("click", () => pick(product));
      return h("li", null, choose);
    }));
  };
  input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(search, 250); });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); clearTimeout(timer); search(); }
  });
  return h("div", { class: "field catalogue-search" },
    h("label", { for: id }, "Find it in the shop's catalogue"),
    h("span", { class: "hint", id: `${id}-hint` }, "Type a word of its name, like “chino”, or its code. Not there? Fill in the product below."),
    input, status, results);
}

function clearInvalid(input) {
  const error = document.getElementById(`${input.id}-error`);
  if (!error) return;
  input.removeAttribute("aria-invalid");
  const described = (input.getAttribute("aria-describedby") || "").split(" ").filter((id) => id !== error.id).join(" ");
  if (described) input.setAttribute("aria-describedby", described); else input.removeAttribute("aria-describedby");
  error.remove();
}

function markInvalid(input, message) {
  clearInvalid(input);
  input.setAttribute("aria-invalid", "true");
  const id = `${input.id}-error`;
  input.insertAdjacentElement("afterend", h("p", { class: "error-text", id }, message));
  input.setAttribute("aria-describedby", [input.getAttribute("aria-describedby"), id].filter(Boolean).join(" "));
  input.addEventListener("input", () => clearInvalid(input), { once: true });
}

function readForm(form, prefix, freeRows, discontinued, note) {
  for (const old of form.querySelectorAll("[aria-invalid='true']")) clearInvalid(old);
  const value = (suffix) => form.querySelector(`#${prefix}-${suffix}`).value.trim();
  const problems = [];
  const invalid = (input, message) => { markInvalid(input, message); problems.push(message); };
  if (!value("name")) invalid(form.querySelector(`#${prefix}-name`), "Enter the product's name.");
  const attributes = {};
  for (const row of freeRows.querySelectorAll(".free-detail")) {
    const nameInput = row.querySelector(".detail-name-input");
    const valueInput = row.querySelector(".detail-value-input");
    const label = nameInput.value.trim();
    const detail = valueInput.value.trim();
    if (!label && !detail) continue;
    const name = attributeName(label);
    if (!ATTRIBUTE_NAME.test(name)) invalid(nameInput, "Name the detail with letters, digits and spaces, starting with a letter.");
    else if (!detail) invalid(valueInput, `Give a value for ${label}, or remove the detail.`);
    else attributes[name] = detail;
  }
  for (const name of SIZE_ATTRIBUTES) {
    if (value(name)) attributes[name] = value(name);
  }
  if (problems.length) {
    warn("Please correct the form:", problems);
    form.querySelector("[aria-invalid='true']").focus();
    return null;
  }
  return {
    product: { sku: value("sku") || null, name: value("name"), brand: value("brand") || null, category: value("category") || null },
    attributes,
    note: note.value.trim() ? note.value.trim() : null,
    ...(discontinued && !discontinued.disabled ? { status: discontinued.checked ? "discontinued" : "available" } : {}),
  };
}

// --- reorder ----------------------------------------------------------------------------------

function partnerSees(partnerId, preference) {
  const consent = consents.find((c) => c.audience === `partner:${partnerId}`);
  return Boolean(consent && (consent.preferences === "all" || consent.preferences.includes(preference.id)));
}

function openReorder(preference, panel) {
  clearMessages();
  const prefix = uniqueId("reorder");
  const allowed = partners.filter((p) => partnerSees(p.id, preference));
  const others = partners.filter((p) => !partnerSees(p.id, preference));
  const from = h("select", { id: `${prefix}-from` },
    h("option", { value: "store" }, "A store (I collect it there)"),
    allowed.map((p) => h("option", { value: `partner:${p.id}` }, p.name)));
  const stores = storePicker(prefix);
  const showNote = h("input", { type: "checkbox", id: `${prefix}-note`, "aria-describedby": `${prefix}-note-hint` });
  const noteChoice = preference.note
    ? h("div", null,
      h("div", { class: "check" }, showNote, h("label", { for: `${prefix}-note` }, "Let the store read my note")),
      h("p", { class: "hint", id: `${prefix}-note-hint` }, "The store sees the product and your sizes; your note only if you tick this."))
    : null;
  stores.element.append(...(noteChoice ? [noteChoice] : []));
  from.addEventListener("change", () => { stores.element.hidden = from.value !== "store"; });
  const quantity = h("input", { type: "number", id: `${prefix}-quantity`, min: 1, max: 99, value: "1", inputmode: "numeric" });
  const place = h("button", { type: "submit" }, "Place reorder");
  const cancel = h("button", { type: "button", class: "button-quiet" }, "Cancel");
  const close = () => { panel.replaceChildren(); document.getElementById(`reorder-${preference.id}`)?.focus(); };
  cancel.addEventListener("click", close);
  let key = api.idempotencyKey();
  let sentBody = null;
  const form = h("form", { class: "card reorder-form", novalidate: true, "aria-label": `Reorder ${preference.product.name}`,
    "data-opener": `reorder-${preference.id}` },
    h("h2", null, `Reorder ${preference.product.name}`),
    preference.status === "discontinued"
      ? h("p", { class: "hint" }, "It is discontinued, but you can still ask for it: a store or a partner may make or find it again.")
      : null,
    h("div", { class: "grid grid-2" },
      h("div", { class: "field" }, h("label", { for: `${prefix}-from` }, "From"), from),
      h("div", { class: "field" }, h("label", { for: `${prefix}-quantity` }, "How many"), quantity)),
    stores.element,
    others.length
      ? h("p", { class: "hint" }, `${others.map((p) => p.name).join(", ")} could make it too, once you let them see it under `,
        h("a", { href: "#sharing" }, "Sharing"), ".")
      : null,
    h("div", { class: "actions" }, place, cancel));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const count = Number(quantity.value);
    const problems = [];
    if (!Number.isInteger(count) || count < 1 || count > 99) {
      problems.push("Choose how many, from 1 to 99.");
      quantity.setAttribute("aria-invalid", "true");
    } else quantity.removeAttribute("aria-invalid");
    const store = from.value === "store" ? stores.chosen() : null;
    if (from.value === "store" && !store) problems.push("Choose the store you will collect it from.");
    if (problems.length) {
      warn("Please correct the form:", problems);
      (quantity.getAttribute("aria-invalid") ? quantity : stores.focusTarget()).focus();
      return;
    }
    const body = { quantity: count, fulfiller: store ? `store:${store.id}` : from.value };
    if (store && showNote.checked) body.fields = ["product", "attributes", "note"];
    // The same key again only when retrying the very same request after the connection failed.
    if (sentBody !== null && JSON.stringify(sentBody) !== JSON.stringify(body)) key = api.idempotencyKey();
    sentBody = body;
    busy(place, async () => {
      try {
        await api.post(`/v1/me/preferences/${preference.id}/reorders`, body, { "Idempotency-Key": key });
      } catch (error) {
        if (error.status !== 0) { key = api.idempotencyKey(); sentBody = null; }
        warnAbout(error, "Reorder not placed");
        return;
      }
      const who = store ? store.name : from.selectedOptions[0].textContent;
      panel.replaceChildren(h("p", { class: "message message-status" },
        `Reorder placed: ${count} × ${preference.product.name} from ${who}. Follow it under `,
        h("a", { href: "#reorders" }, "Reorders"), "."));
      announce(`Reorder placed: ${count} × ${preference.product.name} from ${who}.`);
      panel.querySelector("a").focus();
    });
  });
  fill(panel, form);
  from.focus();
}

/** The store to collect from: the open stores of the directory, searchable by name, address
 * or number; a few at a time, as radio buttons. */
function storePicker(prefix) {
  const id = `${prefix}-store`;
  const input = h("input", { type: "search", id: `${id}-find`, autocomplete: "off", maxlength: 100,
    "aria-describedby": `${id}-status` });
  const status = h("p", { class: "hint", id: `${id}-status`, role: "status" });
  const choices = h("div", { class: "store-choices", id: `${id}-choices` });
  const shown = new Map();
  let chosenId = null;
  let timer = null;
  let asked = 0;
  const search = async () => {
    const words = input.value.trim();
    const mine = ++asked;
    let page;
    try {
      page = await api.get(`/v1/stores?limit=8${words ? `&q=${encodeURIComponent(words)}` : ""}`);
    } catch (error) {
      if (mine === asked) status.textContent = "The stores cannot be listed right now; try again in a moment.";
      return;
    }
    if (mine !== asked) return; // a later search has been sent
    status.textContent = page.items.length
      ? (page.next ? "Type a town, street or store name to find others." : "")
      : (words ? `No open store matches “${words}”.` : "There are no stores to collect from yet.");
    for (const store of page.items) shown.set(store.id, store);
    if (!page.items.some((store) => store.id === chosenId)) chosenId = null; // no hidden choice
    fill(choices, page.items.map((store) => {
      const radio = h("input", { type: "radio", name: id, id: `${id}-${store.id}`, value: store.id,
        checked: store.id === chosenId });
      radio.addEventListener("change", () => { chosenId = store.id; });
      return h("div", { class: "check" }, radio,
        h("label", { for: `${id}-${store.id}` }, store.name,
          store.address ? h("span", { class: "meta" }, ` — ${store.address}`) : null));
    }));
  };
  input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(search, 250); });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); clearTimeout(timer); search(); }
  });
  search();
  const element = h("fieldset", { class: "store-picker" },
    h("legend", null, "Which store"),
    h("div", { class: "field" }, h("label", { for: `${id}-find` }, "Find a store"), input),
    status,
    choices);
  return {
    element,
    chosen: () => (chosenId ? shown.get(chosenId) : null),
    focusTarget: () => choices.querySelector("input") || input,
  };
}
