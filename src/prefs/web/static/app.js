// The self-service page: sign-in, the sections and moving between them.

import * as api from "./api.js";
import { announce, busy, clearMessages, fill, h, warn, warnAbout } from "./elements.js";
import * as session from "./session.js";
import * as oidc from "./oidc.js";
import * as draft from "./draft.js";
import * as preferences from "./preferences.js";
import * as reorders from "./reorders.js";
import * as sharing from "./sharing.js";
import * as till from "./till.js";
import * as looked from "./looked.js";
import * as mydata from "./mydata.js";

const VIEWS = { preferences, reorders, sharing, till, looked, data: mydata };
const DEFAULT_VIEW = "preferences";
const view = document.getElementById("view");
const nav = document.getElementById("sections");
const signOutButton = document.getElementById("sign-out");
const demoSignIn = document.body.dataset.demoSignIn === "on";

let shown = null;
let leaving = () => {};

const askedFor = session.takeHandOver();

function wantedView() {
  const name = window.location.hash.slice(1);
  return Object.hasOwn(VIEWS, name) ? name : null;
}

function markCurrent(name) {
  for (const link of nav.querySelectorAll("a[data-view]")) {
    if (link.dataset.view === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

/** Show a section; ``focus`` moves keyboard focus to its heading (after a person navigated). */
async function show(name, { focus = true } = {}) {
  leaving();
  leaving = () => {};
  shown = name;
  markCurrent(name);
  document.title = `${nav.querySelector(`a[data-view="${name}"]`).textContent} — your preference locker`;
  fill(view, h("p", { class: "loading" }, "Loading…"));
  try {
    const stop = await VIEWS[name].show(view, context);
    if (typeof stop === "function") leaving = stop;
  } catch (error) {
    if (error instanceof api.ApiError && error.status === 401) return;
    if (error instanceof api.ApiError && error.problem.type === "urn:prefs:problem:not-enrolled") {
      showEnrolment();
      return;
    }
    fill(view, h("h1", { tabindex: "-1" }, "This section could not be loaded"));
    warnAbout(error, "Could not load");
  }
  if (focus && shown === name) view.querySelector("h1")?.focus();
}

const context = {
  /** Re-draw the current section without moving focus. */
  refresh() {
    return show(shown, { focus: false });
  },
  signedOut: endSession,
};

function signedIn() {
  nav.hidden = false;
  signOutButton.hidden = false;
}

function endSession(message) {
  leaving();
  leaving = () => {};
  session.forget();
  shown = null;
  nav.hidden = true;
  signOutButton.hidden = true;
  showSignIn();
  if (message) warn(message);
}

api.onSignedOut(() => endSession("Your session has ended. Please sign in again."));
if (oidc.enabled()) {
  // Noticed before a request fails: keep what the customer was typing, sign in again, come back.
  api.onExpiring(async () => {
    draft.keep(shown || DEFAULT_VIEW);
    await oidc.signIn(shown || DEFAULT_VIEW);
  });
}

signOutButton.addEventListener("click", async () => {
  endSession();
  announce("You are signed out. This tab no longer holds your sign-in.");
  if (oidc.enabled()) {
    const end = await oidc.endSessionUrl();
    if (end) window.location.assign(end); // and at the identity provider too
  }
});

async function signInWithProvider() {
  clearMessages();
  try {
    await oidc.signIn(wantedView() || DEFAULT_VIEW);
  } catch {
    warn("The sign-in service cannot be reached right now. Please try again in a moment.");
  }
}

function showSignIn() {
  document.title = "Sign in — your preference locker";
  const heading = h("h1", { tabindex: "-1" }, "Your preference locker");
  const parts = [
    heading,
    h("p", { class: "lead" },
      "Keep the things you buy again — the exact product, size, fit and colour — and decide who may see them."),
    h("ul", { class: "promise" },
      h("li", null, "Nothing is shared until you say so, and you can stop sharing at any time."),
      h("li", null, "Everything you write is stored encrypted."),
      h("li", null, "You can see every time someone looked."),
      h("li", null, "No newsletters, no offers: prefs never sends you messages.")),
  ];
  if (oidc.enabled()) {
    const button = h("button", { type: "button", id: "sign-in" }, "Sign in");
    button.addEventListener("click", () => busy(button, signInWithProvider));
    parts.push(h("div", { class: "card" },
      h("h2", null, "Sign in"),
      h("p", null, "Sign in with your account at the shop."),
      button));
  }
  if (demoSignIn) {
    const button = h("button", { type: "button", id: "demo-sign-in" }, "Sign in as a demo customer");
    button.addEventListener("click", () => busy(button, signInAsDemo));
    parts.push(h("div", { class: "card" },
      h("h2", null, "Try it"),
      h("p", null, "This is a development server: sign in as the demo customer, who already keeps a few preferences."),
      button));
  } else if (!oidc.enabled()) {
    parts.push(h("div", { class: "card" },
      h("h2", null, "Sign in"),
      h("p", null, "Open this page from your account on the shop's website: it signs you in here.")));
  }
  fill(view, h("div", { class: "welcome" }, parts));
}

async function signInAsDemo() {
  clearMessages();
  try {
    const answer = await api.post("/dev/demo-session");
    session.keep(answer.token);
  } catch (error) {
    warnAbout(error, "Could not sign in");
    return;
  }
  announce("Signed in as the demo customer.");
  await start(wantedView() || DEFAULT_VIEW);
}

function showEnrolment() {
  nav.hidden = true;
  document.title = "Start your locker";
  const card = h("input", { type: "text", id: "enrol-card", inputmode: "numeric", autocomplete: "off",
    "aria-describedby": "enrol-card-hint" });
  const button = h("button", { type: "submit" }, "Start my locker");
  const form = h("form", { class: "card", novalidate: true },
    h("div", { class: "field" },
      h("label", { for: "enrol-card" }, "Loyalty card number (optional)"),
      h("span", { class: "hint", id: "enrol-card-hint" },
        "Only needed if you want a till to find your preferences from your card. You can add it later."),
      card),
    button);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(button, async () => {
      try {
        await api.post("/v1/me", card.value.trim() ? { card: card.value.trim() } : undefined);
      } catch (error) {
        warnAbout(error, "Could not start your locker");
        return;
      }
      announce("Your locker is ready.");
      await start(DEFAULT_VIEW);
    });
  });
  fill(view, h("div", { class: "welcome" },
    h("h1", { tabindex: "-1" }, "Start your locker"),
    h("p", null, "You are signed in, but you keep nothing here yet. Start your locker to add the things you buy again."),
    form));
  view.querySelector("h1").focus();
}

async function start(name) {
  signedIn();
  if (wantedView() !== name) window.history.replaceState(null, "", `#${name}`);
  await show(name);
}

window.addEventListener("hashchange", () => {
  const name = wantedView();
  if (name && session.token() && name !== shown) {
    clearMessages();
    show(name);
  }
});

document.querySelector(".skip-link").addEventListener("click", (event) => {
  event.preventDefault();
  (view.querySelector("h1") || document.getElementById("main")).focus();
});

/** Back from the identity provider: finish signing in, then the view and the text the customer had. */
async function signedInByProvider() {
  let back;
  try {
    back = await oidc.completeSignIn();
  } catch (error) {
    showSignIn();
    warn("Signing in did not work. Please sign in again.", [error.message]);
    return;
  }
  session.keep(back.accessToken);
  await start(Object.hasOwn(VIEWS, back.view) ? back.view : DEFAULT_VIEW);
  const kept = draft.take();
  if (kept && kept.view === shown && await draft.restore(kept)) {
    announce("You are signed in again. What you were typing is back: check it and save.");
  } else {
    announce("You are signed in.");
  }
}

if (oidc.returning()) {
  signedInByProvider();
} else if (session.token()) {
  const first = (askedFor && Object.hasOwn(VIEWS, askedFor) ? askedFor : null) || wantedView() || DEFAULT_VIEW;
  start(first);
} else {
  showSignIn();
}
