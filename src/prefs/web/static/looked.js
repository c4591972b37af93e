// Who looked: every disclosure to anyone but the customer, in plain words, newest first.

import * as api from "./api.js";
import { fill, h, warnAbout } from "./elements.js";
import { friendlyTime } from "./words.js";

// The summary names at most three preferences ("…, Oxford Shirt and 2 more"): the rest on request.
const NAMED_IN_SUMMARY = 3;

function allPreferences(entry) {
  if (entry.preferences.length <= NAMED_IN_SUMMARY) return null;
  return h("details", { class: "log-preferences" },
    h("summary", null, `Show all ${entry.preferences.length} preferences`),
    h("ul", null, entry.preferences.map((p) => h("li", null, p.name || "A preference you have since deleted"))));
}

export async function show(root) {
  const first = await api.get("/v1/me/access-log?limit=50");
  const list = h("ol", { class: "plain-list", id: "access-log", "aria-labelledby": "looked-heading" });
  const more = h("button", { type: "button", class: "button-quiet", hidden: true }, "Show earlier");
  let next = null;

  function add(page) {
    for (const entry of page.items) {
      list.append(h("li", { class: "card log-entry" },
        h("p", null, entry.summary),
        h("time", { datetime: entry.at }, friendlyTime(entry.at)),
        allPreferences(entry)));
    }
    next = page.next;
    more.hidden = !next;
  }

  more.addEventListener("click", async () => {
    const count = list.children.length;
    try {
      add(await api.get(`/v1/me/access-log?limit=50&after=${encodeURIComponent(next)}`));
    } catch (error) {
      warnAbout(error, "Could not load more");
      return;
    }
    const firstNew = list.children[count];
    if (firstNew) { firstNew.setAttribute("tabindex", "-1"); firstNew.focus(); }
  });

  fill(root,
    h("div", { class: "view-head" }, h("h1", { id: "looked-heading", tabindex: "-1" }, "Who looked")),
    h("p", { class: "lead" }, "Every time a till, a partner or anyone else but you saw your preferences — who, what they saw, and when."),
    list, more);
  if (!first.items.length) {
    list.append(h("li", { class: "card empty" }, "Nobody has looked at your preferences yet."));
  }
  add(first);
}
