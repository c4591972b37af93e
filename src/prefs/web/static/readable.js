// The export as a document a person opens and prints: made in the browser from the export's JSON
// (GET /v1/me/export), so what it shows is exactly what the JSON holds, with no second renderer
// on the server. Every piece of the customer's text goes in as a text node and comes out of the
// serializer escaped: nothing they typed can become markup or script in the file.

import {
  FIELD_WORDS, REORDER_STATES, attributeLabel, consentSentence, exactTime, friendlyDate, LANGUAGE,
  listWords, orderedAttributes, plural, productMeta,
} from "./words.js";

// The file is opened from disk, beyond the page's Content-Security-Policy: it carries its own,
// which lets it load nothing and run nothing (its one style sheet is inline).
const FILE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'";
const STYLE = `
body { font-family: system-ui, sans-serif; line-height: 1.5; color: #1c2430; max-width: 48rem; margin: 2rem auto; padding: 0 1rem; }
h1 { font-size: 1.75rem; margin-bottom: 0.25rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #c9d0da; }
h3 { margin: 1rem 0 0.25rem; } .meta { color: #4a5565; } .mono { font-family: ui-monospace, monospace; overflow-wrap: anywhere; }
.note { border-left: 3px solid #c9d0da; padding-left: 0.75rem; font-style: italic; white-space: pre-line; }
section.item { break-inside: avoid; border-top: 1px solid #e3e7ed; padding: 0.25rem 0 0.5rem; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.125rem 1rem; margin: 0.25rem 0; } dt { color: #4a5565; } dd { margin: 0; }
@media print { body { margin: 0; } h2 { break-after: avoid; } }
`;

/** The export ``data`` as the text of a standalone HTML document. */
export function readableExport(data, madeAt = new Date()) {
  const doc = document.implementation.createHTMLDocument("");
  const h = (tag, props, ...children) => {
    const element = doc.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (value !== null && value !== undefined && value !== false) element.setAttribute(name, String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      element.append(child instanceof Node ? child : doc.createTextNode(String(child)));
    }
    return element;
  };
  const terms = (rows) => h("dl", null, rows.filter(([, value]) => value !== null && value !== undefined && value !== "")
    .flatMap(([term, value]) => [h("dt", null, term), h("dd", null, value)]));
  const when = (iso) => (iso ? exactTime(iso) : null);
  const namesById = new Map((data.preferences || []).map((p) => [p.id, p.product.name]));
  const section = (title, intro, items, empty) => [
    h("h2", null, title),
    intro ? h("p", { class: "meta" }, intro) : null,
    items.length ? items : h("p", null, empty),
  ];

  const profile = data.profile || {};

  const preferences = (data.preferences || []).map((p) => h("section", { class: "item" },
    h("h3", null, `${p.rank}. ${p.product.name}`, p.status === "discontinued" ? " (discontinued)" : ""),
    productMeta(p.product) ? h("p", { class: "meta" }, productMeta(p.product)) : null,
    terms([
      ...orderedAttributes(p.attributes).map(([name, value]) => [attributeLabel(name), value]),
      ["Bought", p.purchases ? `${plural(p.purchases, "time")}${p.last_purchased_on ? `, last on ${friendlyDate(p.last_purchased_on)}` : ""}` : null],
      ["Added by a till", p.source ? `store ${p.source.store}, ${friendlyDate(p.source.purchased_on)}` : null],
      ["Kept since", when(p.created_at)],
    ]),
    p.note ? h("p", { class: "note" }, p.note) : null));

  const consents = (data.consents || []).map((c) => h("section", { class: "item" },
    h("h3", null, c.recipient),
    terms([
      ["May see", listWords(c.fields.map((f) => FIELD_WORDS[f] || f)) || "nothing of your preferences"],
      ["Which preferences", c.preferences === "all" ? "All, including ones added later"
        : listWords(c.preferences.map((id) => namesById.get(id) || "a preference you have since deleted"))],
      ["Until", c.expires_at ? when(c.expires_at) : "you stop it"],
      ["Since", when(c.granted_at)],
      ["Their reference for you", c.reference ? h("span", { class: "mono" }, c.reference) : null],
      ["Receipt", h("span", { class: "mono" }, c.receipt_id)],
    ])));

  const history = (data.consent_ledger || []).map((entry) => h("section", { class: "item" },
    h("p", null, consentSentence(entry.receipt)),
    terms([
      ["Recorded", when(entry.receipt.timestamp)],
      ["Receipt", h("span", { class: "mono" }, entry.receipt.receipt_id)],
      ["Fingerprint", h("span", { class: "mono" }, entry.hash)],
    ])));

  const reorders = (data.reorders || []).map((r) => {
    const name = r.item?.product?.name || namesById.get(r.preference_id) || "A preference you have since deleted";
    return h("section", { class: "item" },
      h("h3", null, `${r.quantity} × ${name}`),
      terms([
        ["State", REORDER_STATES[r.state] || r.state],
        ["From", r.store ? r.store.name : r.fulfiller],
        ["Sizes and details sent", listWords(orderedAttributes(r.item?.attributes).map(([n, v]) => `${attributeLabel(n)} ${v}`))],
        ["Your note, shared", r.item?.note || null],
        ["Asked", when(r.created_at)],
        ["Order number", h("span", { class: "mono" }, r.id.slice(0, 8).toUpperCase())],
      ]));
  });

  const looked = (data.access_log || []).map((d) => h("section", { class: "item" },
    h("p", null, d.summary),
    terms([
      ["When", when(d.at)],
      ["Preferences shown", d.preferences.length > 3
        ? listWords(d.preferences.map((p) => p.name || "a preference you have since deleted")) : null],
    ])));

  const codes = (data.checkout_codes_in_force || []).map((c) => h("section", { class: "item" },
    terms([
      ["Shows", listWords(c.fields.map((f) => FIELD_WORDS[f] || f))],
      ["Made", when(c.created_at)],
      ["Ends", when(c.expires_at)],
    ])));

  doc.body.append(...[
    h("h1", null, "Everything your preference locker holds"),
    h("p", { class: "meta" }, `Made on ${exactTime(madeAt.toISOString())} from your export (format ${data.schema_version}). `,
      `Held by ${data.controller}.`),
    terms([
      ["Your locker", profile.id ? h("span", { class: "mono" }, profile.id) : null],
      ["Loyalty card", profile.card ? `${profile.card}${profile.card_status === "pending" ? " (not yet confirmed at a till)" : ""}` : "none"],
      ["Kept since", when(profile.created_at)],
    ]),
    section("Your preferences", "In your own order.", preferences, "You keep no preferences."),
    section("Who may see them now", null, consents, "You share nothing."),
    section("Every change to your sharing", "Oldest first, each with its receipt.", history, "No changes."),
    section("Reorders", null, reorders, "No reorders."),
    section("Checkout codes still working", null, codes, "None."),
    section("Who looked", "Every time someone other than you saw your preferences, oldest first.", looked, "Nobody has looked."),
  ].flat(Infinity).filter((part) => part !== null && part !== undefined));
  // The head is ours alone (no customer text), written out here: a style element made in the
  // page would be refused by the page's own policy.
  return [
    "<!doctype html>",
    `<html lang="${LANGUAGE}">`,
    "<head>",
    '<meta charset="utf-8">',
    `<meta http-equiv="Content-Security-Policy" content="${FILE_POLICY}">`,
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    '<meta name="referrer" content="no-referrer">',
    "<title>Everything your preference locker holds</title>",
    `<style>${STYLE}</style>`,
    "</head>",
    doc.body.outerHTML,
    "</html>",
    "",
  ].join("\n");
}
