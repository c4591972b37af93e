// The customer's token: handed over in the URL fragment (#token=…) by the hosting account page,
// or minted by the development demo sign-in. Kept in memory and in this tab's sessionStorage only;
// never put back in a URL, never logged.

const STORAGE_KEY = "prefs.customer-token";
const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

let current = null;
let lapsed = false; // a kept token ran out (the page can send the customer through sign-in again)

function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
  } catch {
    return null;
  }
}

function usable(token) {
  if (typeof token !== "string" || token.length > 8192 || !JWT_SHAPE.test(token)) return false;
  const payload = claims(token);
  // The service checks the signature; the page only drops tokens that are plainly expired.
  return payload !== null && (typeof payload.exp !== "number" || payload.exp * 1000 > Date.now());
}

/**
 * Take a token handed over in the fragment (`#token=…`, optionally `&view=sharing`), keep it,
 * and remove it from the address bar and history at once. Returns the view asked for, if any.
 */
export function takeHandOver() {
  const fragment = window.location.hash.slice(1);
  if (!/(^|&)token=/.test(fragment)) return null;
  const params = new URLSearchParams(fragment);
  const handed = params.get("token");
  const view = params.get("view");
  const clean = window.location.pathname + window.location.search + (view ? `#${encodeURIComponent(view)}` : "");
  window.history.replaceState(null, "", clean);
  // A link cannot sign anyone in where the page signs in with the identity provider (no state,
  // no nonce would tie it to this browser), nor replace a sign-in this tab already holds.
  if (document.body.dataset.oidcClientId || token() !== null) return view;
  if (usable(handed)) keep(handed);
  return view;
}

export function keep(token) {
  current = token;
  lapsed = false;
  try {
    window.sessionStorage.setItem(STORAGE_KEY, token);
  } catch {
    // Storage refused (private mode): the token lives in memory for this page only.
  }
}

export function token() {
  if (current === null) {
    let stored = null;
    try {
      stored = window.sessionStorage.getItem(STORAGE_KEY);
    } catch {
      stored = null;
    }
    if (stored !== null && usable(stored)) current = stored;
    else {
      forget();
      lapsed = stored !== null;
    }
  }
  return current;
}

export function forget() {
  current = null;
  lapsed = false;
  try {
    window.sessionStorage.removeItem(STORAGE_KEY);
  } catch {
    // nothing kept
  }
}

/** Whether the kept token ran out, or runs out within ``seconds`` (an opaque one: never, as far
 * as the page knows). */
export function expiresWithin(seconds) {
  if (current !== null && !usable(current)) {
    forget();
    lapsed = true;
  }
  const kept = token();
  if (kept === null) return lapsed;
  const payload = claims(kept);
  if (payload === null || typeof payload.exp !== "number") return false;
  // never more than a third of the token's life, or a short-lived token would be renewed forever
  const margin = typeof payload.iat === "number" ? Math.min(seconds, (payload.exp - payload.iat) / 3) : seconds;
  return payload.exp * 1000 - Date.now() < margin * 1000;
}
