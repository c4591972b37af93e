// Sharing: for each audience, what it sees (per field, per preference, until when); the history.

import * as api from "./api.js";
import { announce, busy, clearMessages, fill, h, hidden, saveFile, uniqueId, warn, warnAbout } from "./elements.js";
import {
  FIELDS, FIELD_LABELS, FIELD_WORDS, consentSentence, dayName, endOfDay, exactTime, friendlyDate,
  friendlyTime, listWords, localDate, orderedAttributes, plural,
} from "./words.js";

const DEFAULT_FIELDS = ["product", "attributes"];

function audiences(partners, consents) {
  const known = [
    { audience: "pos", title: "Store tills", who: "the store tills",
      about: "Store tills see these when you give your loyalty card at checkout, so staff can find your size. (A checkout code made under “At the till” works without this; stopping ends your codes too.)" },
    ...partners.map((p) => ({ audience: `partner:${p.id}`, title: p.name, who: p.name,
      about: `${p.description ? `${p.description} ` : ""}A partner you choose can see these to make or supply your items again, and you can reorder from them.` })),
    { audience: "purchases", title: "Let the tills add what I buy", who: "the store tills", writes: true,
      about: "When you give your loyalty card at a till, what you buy is added to your preferences (or counted again if you keep it already), with the store and the day. The tills see nothing of your preferences for this, and every addition shows under “Who looked”." },
    { audience: "insights", title: "Anonymous demand counts", who: "the anonymous demand counts",
      about: "Once a day the shop's buyers see roughly how many people want a discontinued product back: counts blurred with random noise and shown only for large groups, so nobody can be picked out — never you, never your notes. Your two highest-ranked discontinued items count at most." },
  ];
  // A partner that has left the directory but still holds a grant: show it, so it can be withdrawn.
  for (const consent of consents) {
    if (!known.some((a) => a.audience === consent.audience)) {
      known.push({ audience: consent.audience, title: consent.recipient, who: consent.recipient,
        about: "This partner is no longer listed." });
    }
  }
  return known;
}

function whatIsShared(consent, preferences, spec) {
  if (spec.writes) {
    if (!consent) return "The tills add nothing.";
    const until = consent.expires_at ? `until ${friendlyDate(localDate(consent.expires_at))}` : "until you stop it";
    return `The tills add what you buy, ${until}.`;
  }
  if (!consent) return "Nothing is shared.";
  const which = consent.preferences === "all"
    ? "all your preferences, including ones you add later"
    : listWords(consent.preferences.map((id) => preferences.find((p) => p.id === id)?.product.name || "a preference"));
  const until = consent.expires_at ? `until ${friendlyDate(localDate(consent.expires_at))}` : "until you stop it";
  return `Shared: ${listWords(consent.fields.map((f) => FIELD_WORDS[f]))} in ${which}, ${until}.`;
}

function preferenceLabel(preference) {
  const sizes = orderedAttributes(preference.attributes).slice(0, 3).map(([, v]) => v).join(", ");
  return sizes ? `${preference.product.name} (${sizes})` : preference.product.name;
}

/** What a change of consent cancelled, in words ("" when nothing): the service lists each reorder
 * a partner had not accepted yet, which a withdrawal (or a narrower grant) cancels. */
async function cancelledWords(change, preferences, spec) {
  const cancelled = change?.cancelled_reorders || [];
  if (!cancelled.length) return "";
  // each reorder with the sizes it was placed with (the preference's may have changed since)
  const placed = new Map();
  try {
    for (const reorder of (await api.get("/v1/me/reorders?limit=100")).items) placed.set(reorder.id, reorder.item);
  } catch { /* the preference's words below */ }
  const items = cancelled.map((r) => {
    const item = placed.get(r.id);
    const preference = preferences.find((p) => p.id === r.preference_id);
    const label = item?.product ? preferenceLabel({ attributes: {}, ...item })
      : preference ? preferenceLabel(preference) : "a preference you deleted";
    return `${r.quantity} × ${label}`;
  });
  const what = cancelled.length === 1 ? "the reorder" : `${cancelled.length} reorders`;
  return ` This also cancelled ${what} ${spec.who} had not accepted yet: ${listWords(items)}. ` +
    "Reorders shows them as cancelled; reorders they had already accepted are still theirs to finish.";
}

function tomorrow() {
  const at = new Date();
  at.setDate(at.getDate() + 1);
  return localDate(at.toISOString());
}

function audienceCard(spec, consent, preferences, onChanged) {
  const id = uniqueId("audience");
  const live = Boolean(consent);
  const fields = consent ? consent.fields : DEFAULT_FIELDS;
  const chosen = consent && consent.preferences !== "all" ? new Set(consent.preferences) : null;
  const fieldBoxes = FIELDS.map((field) => {
    const box = h("input", { type: "checkbox", id: `${id}-field-${field}`, value: field, checked: fields.includes(field) });
    return h("div", { class: "check" }, box, h("label", { for: `${id}-field-${field}` }, FIELD_LABELS[field]));
  });
  const allRadio = h("input", { type: "radio", name: `${id}-which`, id: `${id}-all`, value: "all", checked: !chosen });
  const someRadio = h("input", { type: "radio", name: `${id}-which`, id: `${id}-some`, value: "some", checked: Boolean(chosen) });
  const preferenceBoxes = h("div", { class: "chosen-preferences", hidden: !chosen },
    preferences.length
      ? preferences.map((p) => h("div", { class: "check" },
        h("input", { type: "checkbox", id: `${id}-pref-${p.id}`, value: p.id, checked: chosen ? chosen.has(p.id) : true }),
        h("label", { for: `${id}-pref-${p.id}` }, preferenceLabel(p))))
      : h("p", { class: "hint" }, "You keep no preferences yet."));
  for (const radio of [allRadio, someRadio]) {
    radio.addEventListener("change", () => { preferenceBoxes.hidden = allRadio.checked; });
  }
  const until = h("input", { type: "date", id: `${id}-until`, min: tomorrow(),
    "aria-describedby": `${id}-until-hint ${id}-until-said`,
    value: consent?.expires_at ? localDate(consent.expires_at) : "" });
  // the chosen day in the page's words: the date field itself shows the browser's own format
  const untilSaid = h("p", { class: "hint until-said", id: `${id}-until-said` });
  const sayUntil = () => {
    untilSaid.textContent = until.value ? `Sharing ends at the end of ${dayName(until.value)}.` : "";
  };
  until.addEventListener("input", sayUntil);
  until.addEventListener("change", sayUntil);
  sayUntil();
  const save = h("button", { type: "submit" }, live ? "Save changes" : spec.writes ? "Let them add" : "Share");
  const cancel = h("button", { type: "button", class: "button-quiet" }, "Cancel");
  const heading = h("h2", { id: `${id}-title`, tabindex: "-1" }, spec.title);
  const form = h("form", { novalidate: true, id: `${id}-form`, hidden: true, "aria-label": spec.writes ? spec.title : `What ${spec.who} may see` },
    spec.writes ? null : h("fieldset", null, h("legend", null, "What they may see"), fieldBoxes),
    spec.writes ? null : h("fieldset", null, h("legend", null, "Which preferences"),
      h("div", { class: "check" }, allRadio, h("label", { for: `${id}-all` }, "All, including ones I add later")),
      h("div", { class: "check" }, someRadio, h("label", { for: `${id}-some` }, "Only the ones I choose")),
      preferenceBoxes),
    h("div", { class: "field" },
      h("label", { for: `${id}-until` }, spec.writes ? "Until (optional)" : "Share until (optional)"),
      h("span", { class: "hint", id: `${id}-until-hint` }, "Leave empty to share until you stop it. Sharing ends at the end of that day."),
      until, untilSaid),
    h("div", { class: "actions" }, save, cancel));
  const open = h("button", { type: "button", class: live ? "button-quiet" : "", "aria-expanded": "false",
    "aria-controls": `${id}-form` }, spec.writes ? (live ? "Change until when" : "Let the tills add what I buy…")
    : live ? `Change what ${spec.who} may see` : `Share with ${spec.who}…`);
  const stop = live ? h("button", { type: "button", class: "button-danger" },
    spec.writes ? "Stop adding purchases" : "Stop sharing", spec.writes ? null : hidden(` with ${spec.who}`)) : null;
  const buttons = h("div", { class: "actions" }, open, stop);
  open.addEventListener("click", () => {
    form.hidden = false;
    buttons.hidden = true;
    form.querySelector("input").focus();
  });
  cancel.addEventListener("click", () => {
    form.hidden = true;
    buttons.hidden = false;
    open.focus();
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const pickedFields = fieldBoxes.map((row) => row.querySelector("input")).filter((b) => b.checked).map((b) => b.value);
    const picked = [...preferenceBoxes.querySelectorAll("input:checked")].map((b) => b.value);
    const problems = [];
    if (!spec.writes && !pickedFields.length) problems.push("Tick at least one thing they may see, or use “Stop sharing”.");
    if (!spec.writes && someRadio.checked && !picked.length) problems.push("Tick at least one preference, or choose “All”.");
    if (until.value && until.value < tomorrow()) problems.push("Choose a day after today to end sharing, or leave it empty.");
    if (problems.length) {
      warn("Please correct the form:", problems);
      return;
    }
    const body = spec.writes ? {} : { fields: pickedFields, preferences: someRadio.checked ? picked : "all" };
    if (until.value) body.expires_at = endOfDay(until.value);
    busy(save, async () => {
      clearMessages();
      let change;
      try {
        change = await api.put(`/v1/me/consents/${spec.audience}`, body);
      } catch (error) {
        warnAbout(error, "Not saved");
        return;
      }
      await onChanged(spec.audience);
      const cancelledNote = await cancelledWords(change, preferences, spec);
      const saved = spec.writes ? "Saved: the tills add what you buy to your preferences."
        : `Saved: ${change.consent.recipient} may see ${listWords(change.consent.fields.map((f) => FIELD_WORDS[f]))}.`;
      announce(`${saved} Receipt ${change.receipt.receipt_id.slice(0, 8)} is in your consent history.${cancelledNote}`);
    });
  });
  stop?.addEventListener("click", () => busy(stop, async () => {
    clearMessages();
    let change;
    try {
      change = await api.del(`/v1/me/consents/${spec.audience}`);
    } catch (error) {
      warnAbout(error, "Not stopped");
      return;
    }
    await onChanged(spec.audience);
    announce((spec.writes ? "The tills add nothing from now on."
      : spec.audience === "pos"
      ? `You stopped sharing with ${spec.who}. They see nothing from now on, and your checkout codes have ended.`
      : `You stopped sharing with ${spec.who}. They see nothing from now on.`) + await cancelledWords(change, preferences, spec));
  }));

  return h("section", { class: "card audience", "aria-labelledby": `${id}-title`, "data-audience": spec.audience },
    h("div", { class: "audience-head" }, heading,
      h("span", { class: `badge ${live ? "badge-live" : "badge-off"}` }, spec.writes ? (live ? "On" : "Off") : live ? "Shared" : "Not shared")),
    h("p", null, spec.about),
    h("p", { class: "shared-summary" }, whatIsShared(consent, preferences, spec)),
    consent?.reference ? h("p", { class: "meta" }, `They know you only by a reference of their own: ${consent.reference.slice(0, 12)}…`) : null,
    buttons,
    form);
}

// --- consent history ------------------------------------------------------------------------

const STATE_WORDS = { ConsentGiven: "Consent given", ConsentWithdrawn: "Consent withdrawn", ConsentExpired: "Consent expired" };

/** The receipt: first what it says in a sentence, then its terms in plain words, and the
 * standard vocabulary and fingerprints last, for whoever checks it. */
function receiptDetails(entry) {
  const r = entry.receipt;
  const plainRows = [
    ["Receipt number", h("span", { class: "mono" }, r.receipt_id)],
    ["Recorded", exactTime(r.timestamp)],
    ["What happened", STATE_WORDS[r.state] || r.state],
    ["Who is responsible", r.controller.name],
    ["Shared with", r.recipient.name],
    ["Why", r.purposes.map((p) => p.purpose).join("; ")],
    ["What they may see", listWords(r.fields.map((f) => FIELD_WORDS[f] || f)) || "nothing"],
    ...(r.recipient.kind === "purchases" ? [["What they may do", "Add what you buy to your preferences"]] : []),
    ["Which preferences", r.preferences === "all" ? "All" : plural(r.preferences.length, "preference")],
    ["Ends", r.expires_at ? exactTime(r.expires_at) : "When you stop it"],
    ["How it was given", r.collection_method === "self-service" ? "By you, on this page or an app" : r.collection_method],
  ];
  const technicalRows = [
    ["Purpose, in the standard vocabulary (W3C DPV)", r.purposes.flatMap((p) => p.dpv).join(", ")],
    ["Kind of consent", r.purposes.map((p) => (p.consent_type === "EXPLICIT" ? "Explicit — you chose it" : p.consent_type)).join(", ")],
    ["Given to a third party", r.purposes.some((p) => p.third_party_disclosure) ? "Yes" : "No"],
    ["Personal data categories", r.pii_categories.join(", ") || "none"],
    ["Receipt format", r.version],
    ["Ledger record", `No. ${entry.seq}`],
    ["Fingerprint", h("span", { class: "mono" }, entry.hash)],
    ["Previous fingerprint", h("span", { class: "mono" }, entry.prev_hash)],
  ];
  const terms = (rows) => h("dl", { class: "receipt" }, rows.flatMap(([term, value]) => [h("dt", null, term), h("dd", null, value)]));
  return h("details", { class: "receipt-details" },
    h("summary", null, "Show the receipt"),
    h("p", { class: "receipt-summary" },
      `In short: ${consentSentence(r)} ${r.controller.name} is responsible for it, and this receipt, recorded ${exactTime(r.timestamp)}, is your proof.`),
    terms(plainRows),
    h("details", { class: "technical" },
      h("summary", null, "Technical details: standard terms and fingerprints"),
      terms(technicalRows),
      h("p", { class: "hint" }, "Each record carries the fingerprint of the one before it, so no change can be slipped in or taken out unseen.")),
    receiptDownloads(r.receipt_id));
}

// The receipt to keep: the Kantara Consent Receipt v1.1 document, and the same signed by the shop.
const DOWNLOADS = [
  { format: "json", label: "Download receipt", kind: "JSON", type: "application/json", extension: "json",
    done: "The receipt is downloaded as a JSON file (Kantara Consent Receipt v1.1)." },
  { format: "jws", label: "Download signed receipt", kind: "JWS", type: "application/jose", extension: "jws",
    done: "The signed receipt is downloaded. Anyone can check it with the keys the shop publishes at /.well-known/jwks.json." },
];

function receiptDownloads(receiptId) {
  const short = receiptId.slice(0, 8);
  const buttons = DOWNLOADS.map((spec) => {
    const button = h("button", { type: "button", class: "button-quiet", "data-format": spec.format },
      spec.label, hidden(` ${short}`), ` (${spec.kind})`);
    button.addEventListener("click", () => busy(button, async () => {
      clearMessages();
      let blob;
      try {
        const path = `/v1/me/consents/receipts/${encodeURIComponent(receiptId)}?format=${spec.format}`;
        blob = await (await api.request("GET", path, { raw: true, headers: { Accept: spec.type } })).blob();
      } catch (error) {
        warnAbout(error, "No download");
        return;
      }
      saveFile(new Blob([blob], { type: spec.type }), `consent-receipt-${short}.${spec.extension}`);
      announce(spec.done);
    }));
    return button;
  });
  return [
    h("p", { class: "hint" }, "Keep a copy: the receipt in the Kantara Consent Receipt format, and the same signed by the shop, so you can show what you agreed to."),
    h("div", { class: "actions" }, buttons),
  ];
}

function historyEntry(entry) {
  return h("li", { class: "history-entry" },
    h("p", null, consentSentence(entry.receipt)),
    h("time", { class: "meta", datetime: entry.receipt.timestamp }, friendlyTime(entry.receipt.timestamp)),
    receiptDetails(entry));
}

export async function show(root, context) {
  const [partners, consents, preferences, history] = await Promise.all([
    api.get("/v1/partners").then((a) => a.items),
    api.get("/v1/me/consents").then((a) => a.items),
    api.get("/v1/me/preferences").then((a) => a.items),
    api.get("/v1/me/consents/history?limit=20"),
  ]);
  const onChanged = async (audience) => {
    await context.refresh();
    document.querySelector(`[data-audience="${audience}"] h2`)?.focus();
  };
  const cards = audiences(partners, consents).map((spec) =>
    audienceCard(spec, consents.find((c) => c.audience === spec.audience), preferences, onChanged));

  const historyList = h("ol", { class: "plain-list", id: "consent-history" }, history.items.map(historyEntry));
  const older = h("button", { type: "button", class: "button-quiet", hidden: !history.next }, "Show older changes");
  let next = history.next;
  older.addEventListener("click", async () => {
    try {
      const page = await api.get(`/v1/me/consents/history?limit=20&before=${encodeURIComponent(next)}`);
      const count = historyList.children.length;
      historyList.append(...page.items.map(historyEntry));
      next = page.next;
      older.hidden = !next;
      const firstNew = historyList.children[count];
      if (firstNew) { firstNew.setAttribute("tabindex", "-1"); firstNew.focus(); }
    } catch (error) {
      warnAbout(error, "Could not load more");
    }
  });

  fill(root,
    h("div", { class: "view-head" }, h("h1", { id: "sharing-heading", tabindex: "-1" }, "Sharing")),
    h("p", { class: "lead" }, "Nothing is shared until you say so. Choose who may see what, and stop whenever you like: it takes effect at once."),
    cards,
    h("section", { class: "card", "aria-labelledby": "history-heading" },
      h("h2", { id: "history-heading" }, "Consent history"),
      h("p", { class: "hint" }, "Every change you made, newest first, each with its receipt."),
      history.items.length ? historyList : h("p", { class: "empty" }, "No changes yet."),
      older));
}
