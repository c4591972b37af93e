// My data: the loyalty card, the export of everything held, and erasing everything.

import * as api from "./api.js";
import { announce, busy, clearMessages, fill, h, saveFile, warn, warnAbout } from "./elements.js";
import { readableExport } from "./readable.js";
import { friendlyTime, plural } from "./words.js";

const CONFIRM_WORD = "ERASE";

// Whether a till can find the customer by their card yet, and how to get there.
function cardStatus(status) {
  if (status === "confirmed") {
    return h("p", { class: "meta card-status", id: "card-status", "data-status": status },
      "Confirmed at a till: tills can find you by this card.");
  }
  if (status === "pending") {
    return h("p", { class: "meta card-status", id: "card-status", "data-status": status },
      h("strong", null, "Not confirmed yet. "),
      "No till finds you by this card until you confirm it, so that nobody else can use your card number. To confirm it, make a code under ",
      h("a", { href: "#till" }, "At the till"),
      " and show your checkout code at the till while your card is scanned.");
  }
  return null;
}

export async function show(root, context) {
  const profile = await api.get("/v1/me");

  // -- loyalty card
  const card = h("input", { type: "text", id: "card-number", inputmode: "numeric", autocomplete: "off",
    value: profile.card || "", "aria-describedby": "card-hint" });
  const saveCard = h("button", { type: "submit" }, "Save card");
  const removeCard = profile.card ? h("button", { type: "button", class: "button-quiet" }, "Remove card") : null;
  const setCard = (value, done) => busy(saveCard, async () => {
    clearMessages();
    try {
      await api.patch("/v1/me", { card: value });
    } catch (error) {
      warnAbout(error, "Card not saved");
      return;
    }
    await context.refresh();
    document.getElementById("card-heading")?.focus();
    announce(done);
  });
  const cardForm = h("form", { class: "card", novalidate: true, "aria-labelledby": "card-heading" },
    h("h2", { id: "card-heading", tabindex: "-1" }, "Loyalty card"),
    h("div", { class: "field" },
      h("label", { for: "card-number" }, "Card number"),
      h("span", { class: "hint", id: "card-hint" }, "Stored encrypted. A till finds you by it only once you have confirmed it, and only if you share with the store tills under Sharing."),
      card),
    cardStatus(profile.card_status),
    h("div", { class: "actions" }, saveCard, removeCard));
  cardForm.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!card.value.trim()) { warn("Enter a card number, or use “Remove card”."); card.focus(); return; }
    setCard(card.value.trim(), "Your loyalty card is saved. Confirm it at a till to be found by it.");
  });
  removeCard?.addEventListener("click", () => setCard(null, "Your loyalty card is removed."));

  // -- export: the JSON document, and the same as a page a person reads and prints
  const today = () => new Date().toISOString().slice(0, 10);
  const exported = async () => (await api.request("GET", "/v1/me/export", { raw: true })).blob();
  const download = h("button", { type: "button", class: "button-quiet", id: "download-export" }, "Download my data", " (JSON)");
  download.addEventListener("click", () => busy(download, async () => {
    clearMessages();
    let blob;
    try {
      blob = await exported();
    } catch (error) {
      warnAbout(error, "No download");
      return;
    }
    saveFile(new Blob([blob], { type: "application/json" }), `prefs-export-${today()}.json`);
    announce("Your data is downloaded as a JSON file.");
  }));
  const readable = h("button", { type: "button", id: "download-readable" },
    "Download a readable copy", " (HTML)");
  readable.addEventListener("click", () => busy(readable, async () => {
    clearMessages();
    let page;
    try {
      page = readableExport(JSON.parse(await (await exported()).text()));
    } catch (error) {
      warnAbout(error, "No download");
      return;
    }
    saveFile(new Blob([page], { type: "text/html" }), `prefs-export-${today()}.html`);
    announce("Your data is downloaded as a page: open it in a browser to read or print it.");
  }));

  // -- erase
  const confirmInput = h("input", { type: "text", id: "erase-confirm", autocomplete: "off", spellcheck: "false",
    "aria-describedby": "erase-hint" });
  const erase = h("button", { type: "submit", class: "button-danger", id: "erase-everything" }, "Erase everything");
  const eraseForm = h("form", { class: "card danger-zone", novalidate: true, "aria-labelledby": "erase-heading" },
    h("h2", { id: "erase-heading" }, "Erase everything"),
    h("p", null, "This deletes your locker: every preference and note, your consents and their history, your reorders and the log of who looked. (A reorder a partner has already accepted stays with them, cancelled and without its details.) The key that encrypts your data is destroyed with it, so even copies in backups can no longer be read. This cannot be undone."),
    h("div", { class: "field" },
      h("label", { for: "erase-confirm" }, `Type ${CONFIRM_WORD} to confirm`),
      h("span", { class: "hint", id: "erase-hint" }, "You may want to download your data first."),
      confirmInput),
    h("div", { class: "actions" }, erase));
  eraseForm.addEventListener("submit", (event) => {
    event.preventDefault();
    if (confirmInput.value.trim() !== CONFIRM_WORD) {
      confirmInput.setAttribute("aria-invalid", "true");
      warn(`Nothing erased: type ${CONFIRM_WORD} in capitals to confirm.`);
      confirmInput.focus();
      return;
    }
    busy(erase, async () => {
      clearMessages();
      try {
        await api.del("/v1/me");
      } catch (error) {
        warnAbout(error, "Nothing erased");
        return;
      }
      context.signedOut();
      announce("Everything is erased. Your locker and the key to it no longer exist.");
    });
  });

  fill(root,
    h("div", { class: "view-head" }, h("h1", { id: "data-heading", tabindex: "-1" }, "My data")),
    h("p", { class: "lead" }, `You keep ${plural(profile.preferences, "preference")} here, since ${friendlyTime(profile.created_at)}.`),
    cardForm,
    h("section", { class: "card", "aria-labelledby": "export-heading" },
      h("h2", { id: "export-heading" }, "Download everything"),
      h("p", null, "Everything held about you: your preferences, consents with their receipts, reorders and the log of who looked."),
      h("p", { class: "hint" }, "The readable copy is a page to open in any browser and print; the JSON file is the same for another app or service."),
      h("div", { class: "actions" }, readable, download)),
    eraseForm);
}
