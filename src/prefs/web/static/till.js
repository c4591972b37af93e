// At the till: a short-lived checkout code, shown large and as a QR code, with its countdown.

import * as api from "./api.js";
import { announce, busy, clearMessages, fill, h, hidden, warn, warnAbout } from "./elements.js";
import { FIELDS, FIELD_LABELS, FIELD_WORDS, clock, listWords, orderedAttributes } from "./words.js";

const MINUTES = [2, 5, 10, 15];
const DEFAULT_FIELDS = ["product", "attributes"];

export async function show(root) {
  const [preferences, consents, profile] = await Promise.all([
    api.get("/v1/me/preferences").then((a) => a.items),
    api.get("/v1/me/consents").then((a) => a.items),
    api.get("/v1/me"),
  ]);
  const pos = consents.find((c) => c.audience === "pos");
  let timer = null;
  const stop = () => { if (timer !== null) window.clearInterval(timer); timer = null; };

  const fieldBoxes = FIELDS.map((field) => h("div", { class: "check" },
    h("input", { type: "checkbox", id: `code-field-${field}`, value: field, checked: DEFAULT_FIELDS.includes(field) }),
    h("label", { for: `code-field-${field}` }, FIELD_LABELS[field])));
  const allRadio = h("input", { type: "radio", name: "code-which", id: "code-all", value: "all", checked: true });
  const someRadio = h("input", { type: "radio", name: "code-which", id: "code-some", value: "some" });
  const chosen = h("div", { class: "chosen-preferences", hidden: true },
    preferences.map((p) => {
      const sizes = orderedAttributes(p.attributes).slice(0, 3).map(([, v]) => v).join(", ");
      return h("div", { class: "check" },
        h("input", { type: "checkbox", id: `code-pref-${p.id}`, value: p.id, checked: true }),
        h("label", { for: `code-pref-${p.id}` }, sizes ? `${p.product.name} (${sizes})` : p.product.name));
    }));
  for (const radio of [allRadio, someRadio]) radio.addEventListener("change", () => { chosen.hidden = allRadio.checked; });
  const minutes = h("select", { id: "code-minutes" },
    MINUTES.map((m) => h("option", { value: m * 60, selected: m === 5 }, `${m} minutes`)));
  const keep = h("input", { type: "checkbox", id: "code-keep-purchases", "aria-describedby": "code-keep-hint" });
  const make = h("button", { type: "submit", id: "make-code" }, "Make a checkout code");
  const result = h("div", { id: "checkout-result" });
  const form = h("form", { class: "card", novalidate: true, "aria-labelledby": "code-form-heading" },
    h("h2", { id: "code-form-heading" }, "Make a code"),
    h("fieldset", null, h("legend", null, "What the till may see"), fieldBoxes),
    h("fieldset", null, h("legend", null, "Which preferences"),
      h("div", { class: "check" }, allRadio, h("label", { for: "code-all" }, "All my preferences")),
      h("div", { class: "check" }, someRadio, h("label", { for: "code-some" }, "Only the ones I choose")),
      chosen),
    h("div", { class: "field" }, h("label", { for: "code-minutes" }, "The code works for"), minutes),
    h("div", { class: "check" }, keep,
      h("label", { for: "code-keep-purchases" }, "Let this till add what I buy today to my preferences")),
    h("p", { class: "hint", id: "code-keep-hint" }, "Once, for this visit only. Every addition shows under “Who looked”."),
    h("div", { class: "actions" }, make));

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const fields = fieldBoxes.map((row) => row.querySelector("input")).filter((b) => b.checked).map((b) => b.value);
    const ids = [...chosen.querySelectorAll("input:checked")].map((b) => b.value);
    const problems = [];
    if (!fields.length) problems.push("Tick at least one thing the till may see.");
    if (someRadio.checked && !ids.length) problems.push("Tick at least one preference, or choose “All my preferences”.");
    if (problems.length) { warn("Please correct the form:", problems); return; }
    busy(make, async () => {
      clearMessages();
      let code;
      try {
        code = await api.post("/v1/me/checkout-codes", {
          fields, preferences: someRadio.checked ? ids : "all", ttl_seconds: Number(minutes.value),
          keep_purchases: keep.checked,
        });
      } catch (error) {
        warnAbout(error, "No code made");
        return;
      }
      stop();
      showCode(code);
    });
  });

  function showCode(code) {
    const grouped = `${code.code.slice(0, 4)} ${code.code.slice(4)}`;
    const expires = new Date(code.expires_at).getTime();
    const left = h("span", { class: "countdown-left" }, clock(expires - Date.now()));
    const countdown = h("p", { class: "countdown", role: "timer", id: "code-countdown" }, "Works for ", left);
    const end = h("button", { type: "button", class: "button-quiet", id: "end-code" }, "End this code");
    const panel = h("section", { class: "card checkout", "aria-labelledby": "code-heading", "data-code": code.code },
      h("h2", { id: "code-heading", tabindex: "-1" }, "Show this at the till"),
      h("p", { class: "checkout-code" }, h("span", { "aria-hidden": "true" }, grouped),
        hidden(`Your code: ${code.code.split("").join(" ")}`)),
      // The service draws the QR code (an SVG made with segno); as an <img> it runs no script.
      h("img", { class: "qr", src: `data:image/svg+xml,${encodeURIComponent(code.qr_svg)}`,
        alt: `QR code of your checkout code ${grouped}` }),
      countdown,
      h("p", { class: "meta" }, `The till sees ${listWords(code.fields.map((f) => FIELD_WORDS[f]))} in ${code.preferences === "all" ? "all your preferences" : `${code.preferences.length} chosen`}. The code works only in the first store that uses it. Its look-up will appear under `,
        h("a", { href: "#looked" }, "Who looked"), "."),
      code.keep_purchases
        ? h("p", { class: "meta", id: "keep-purchases-note" }, "This till may also add what you buy on this visit to your preferences, once.")
        : null,
      profile.card_status === "pending"
        ? h("p", { class: "meta", id: "confirm-card-hint" },
          "Your loyalty card is not confirmed yet: show this code at the till while your card is scanned, and the till confirms it.")
        : null,
      h("div", { class: "actions" }, end));
    end.addEventListener("click", () => busy(end, async () => {
      clearMessages();
      try {
        await api.del(`/v1/me/checkout-codes/${code.id}`);
      } catch (error) {
        warnAbout(error, "Code not ended");
        return;
      }
      stop();
      panel.classList.add("checkout-expired");
      countdown.textContent = "Ended. No till can use this code any more.";
      end.remove();
      announce("Your checkout code is ended. No till can use it any more.");
    }));
    fill(result, panel);
    panel.querySelector("h2").focus();
    announce(`Your checkout code is ready. It works for ${Math.round((expires - Date.now()) / 60000)} minutes.`);
    let warned = false;
    timer = window.setInterval(() => {
      const remaining = expires - Date.now();
      left.textContent = clock(remaining);
      if (remaining <= 60_000 && remaining > 0 && !warned) {
        warned = true;
        announce("Your checkout code works for one more minute.");
      }
      if (remaining <= 0) {
        stop();
        panel.classList.add("checkout-expired");
        countdown.textContent = "Expired. Make a new code if you need one.";
        announce("Your checkout code has expired.");
      }
    }, 1000);
  }

  fill(root,
    h("div", { class: "view-head" }, h("h1", { id: "till-heading", tabindex: "-1" }, "At the till")),
    h("p", { class: "lead" }, "Make a code and show it at the checkout. The till sees only what you pick, and only for a few minutes."),
    h("p", { class: "meta" }, !pos
      ? "Tills cannot find you from your loyalty card: you share nothing with them. A code works anyway."
      : profile.card_status === "confirmed"
        ? "Tills can also find your preferences from your loyalty card, because you share them with the store tills under Sharing."
        : profile.card_status === "pending"
          ? "Tills cannot find you from your loyalty card until it is confirmed: show a code at the till while your card is scanned."
          : "You have not added a loyalty card under My data. A code works anyway."),
    result,
    form);
  return stop;
}
