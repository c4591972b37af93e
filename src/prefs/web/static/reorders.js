// Reorders: what the customer asked for again, from whom, and where each one stands.

import * as api from "./api.js";
import { announce, busy, clearMessages, confirmAction, fill, h, hidden, warnAbout } from "./elements.js";
import { REORDER_STATES, attributeLabel, friendlyTime, orderedAttributes, productMeta } from "./words.js";

/** The short number a customer shows at the store (the till's queue shows the same). */
export const orderNumber = (reorder) => reorder.id.slice(0, 8).toUpperCase();

export async function show(root) {
  const [page, preferences, partners] = await Promise.all([
    api.get("/v1/me/reorders?limit=100"),
    api.get("/v1/me/preferences").then((answer) => answer.items),
    api.get("/v1/partners").then((answer) => answer.items),
  ]);
  const names = new Map(preferences.map((p) => [p.id, p.product.name]));
  const partnerNames = new Map(partners.map((p) => [`partner:${p.id}`, p.name]));
  const list = h("ol", { class: "plain-list", id: "reorder-list", "aria-labelledby": "reorders-heading" });
  fill(root,
    h("div", { class: "view-head" }, h("h1", { id: "reorders-heading", tabindex: "-1" }, "Reorders")),
    h("p", { class: "lead" }, "Things you asked for again. Start a reorder from a preference under ",
      h("a", { href: "#preferences" }, "My preferences"), ". You can cancel one until it is accepted. ",
      "A partner's proposal waits for you: nothing is made until you confirm it. ",
      "When a store has your reorder ready, show its order number there to collect it."),
    list);

  function nameOf(reorder) {
    return reorder.item?.product?.name || names.get(reorder.preference_id) || "A preference you deleted";
  }

  function whoFrom(reorder) {
    if (reorder.store) return reorder.store.closed ? `${reorder.store.name} (now closed)` : reorder.store.name;
    if (reorder.fulfiller === "store") return "no store named";
    return partnerNames.get(reorder.fulfiller) || "a partner";
  }

  /** "waist 34, leg 34, khaki": the sizes sent with this reorder, to tell two reorders of the
   * same product apart in a button's name. */
  function sizesOf(reorder) {
    return orderedAttributes(reorder.item?.attributes).map(([name, value]) => `${name.replace(/_/g, " ")} ${value}`).join(", ");
  }

  /** What was sent with the reorder (its snapshot, not the preference as it is now): the
   * product's brand and code, the sizes and details, and the note if the customer shared it. */
  function whatWasSent(reorder) {
    const item = reorder.item;
    if (!item) return [];
    const details = orderedAttributes(item.attributes);
    const meta = item.product ? productMeta(item.product) : "";
    return [
      meta ? h("p", { class: "meta" }, meta) : null,
      details.length
        ? h("ul", { class: "details-list", "aria-label": `Sizes and details sent with this reorder` },
          details.map(([name, value]) => h("li", null, h("span", { class: "detail-name" }, `${attributeLabel(name)}: `), value)))
        : null,
      item.note ? h("p", { class: "note" }, h("span", { class: "visually-hidden" }, "Your note, shared with it: "), item.note) : null,
    ];
  }

  function storeLines(reorder) {
    if (reorder.fulfiller === "store") {
      // placed before reorders named their store: no store could see it
      return [h("p", { class: "hint" }, "This reorder named no store, so no store could see it. ",
        "To have it made or found, reorder it from a store under ", h("a", { href: "#preferences" }, "My preferences"), ".")];
    }
    if (!reorder.store) return [];
    const lines = [h("p", { class: "meta" }, `Order number ${orderNumber(reorder)}`,
      reorder.store.address ? ` · ${reorder.store.address}` : "")];
    if (reorder.state === "ready") {
      lines.push(h("p", { class: "message message-status" },
        `Ready to collect at ${reorder.store.name}: show order number ${orderNumber(reorder)} at the till.`));
    }
    return lines;
  }

  function draw(items) {
    if (!items.length) {
      fill(list, h("li", { class: "card empty" }, "No reorders yet."));
      return;
    }
    fill(list, items.map((reorder) => {
      const name = nameOf(reorder);
      const sizes = sizesOf(reorder);
      const card = h("li", { class: "card reorder", id: `reorder-${reorder.id}` },
        h("h2", null, `${reorder.quantity} × ${name}`),
        ...whatWasSent(reorder),
        h("p", null, h("span", { class: `badge badge-${reorder.state}` }, REORDER_STATES[reorder.state] || reorder.state)),
        h("p", { class: "meta" }, `From ${whoFrom(reorder)}${reorder.origin === "partner" ? ", placed by the partner for you" : ""}.`),
        ...storeLines(reorder),
        h("time", { datetime: reorder.created_at }, `Asked ${friendlyTime(reorder.created_at)}`));
      if (reorder.state === "proposed") {
        card.append(h("div", { class: "actions" }, ...answerButtons(reorder, name)));
      } else if (reorder.state === "requested") {
        const cancel = h("button", { type: "button", class: "button-quiet button-small", id: `cancel-${reorder.id}` },
          "Cancel this reorder", hidden(` of ${reorder.quantity} × ${name}${sizes ? `, ${sizes}` : ""}`));
        cancel.addEventListener("click", () => busy(cancel, async () => {
          const sure = await confirmAction({
            title: "Cancel this reorder?",
            text: `${reorder.quantity} × ${name} from ${whoFrom(reorder)} will not be made or sent.`,
            yes: "Cancel the reorder",
            no: "Keep it",
          });
          if (!sure) return;
          clearMessages();
          try {
            await api.post(`/v1/me/reorders/${reorder.id}/cancel`);
          } catch (error) {
            warnAbout(error, "Not cancelled");
            await refresh();
            return;
          }
          await refresh();
          document.getElementById(`reorder-${reorder.id}`)?.querySelector("h2")?.setAttribute("tabindex", "-1");
          document.getElementById(`reorder-${reorder.id}`)?.querySelector("h2")?.focus();
          announce(`The reorder of ${name} is cancelled.`);
        }));
        card.append(h("div", { class: "actions" }, cancel));
      }
      return card;
    }));
  }

  function answerButtons(reorder, name) {
    const sizes = sizesOf(reorder);
    const what = ` the proposal of ${reorder.quantity} × ${name}${sizes ? `, ${sizes}` : ""}`;
    const yes = h("button", { type: "button", class: "button-small", id: `confirm-${reorder.id}` },
      "Confirm", hidden(what));
    const no = h("button", { type: "button", class: "button-quiet button-small", id: `decline-${reorder.id}` },
      "Decline", hidden(what));
    yes.addEventListener("click", () => busy(yes, () =>
      answer(reorder, "confirm", `You confirmed ${reorder.quantity} × ${name} from ${whoFrom(reorder)}.`)));
    no.addEventListener("click", () => busy(no, async () => {
      const sure = await confirmAction({
        title: "Decline this proposal?",
        text: `${whoFrom(reorder)} will not make or send ${reorder.quantity} × ${name}.`,
        yes: "Decline the proposal",
        no: "Keep it for now",
      });
      if (sure) await answer(reorder, "cancel", `You declined ${reorder.quantity} × ${name}.`);
    }));
    return [yes, no];
  }

  async function answer(reorder, action, said) {
    clearMessages();
    try {
      await api.post(`/v1/me/reorders/${reorder.id}/${action}`);
    } catch (error) {
      warnAbout(error, action === "confirm" ? "Not confirmed" : "Not declined");
      await refresh();
      return;
    }
    await refresh();
    const heading = document.getElementById(`reorder-${reorder.id}`)?.querySelector("h2");
    heading?.setAttribute("tabindex", "-1");
    heading?.focus();
    announce(said);
  }

  async function refresh() {
    draw((await api.get("/v1/me/reorders?limit=100")).items);
  }

  draw(page.items);
}
