// Signing in with the retailer's identity provider: OpenID Connect, authorization code with PKCE
// (S256), `state` and `nonce` checked, the provider found through its discovery document. The
// protocol is oauth4webapi's (vendor/, MIT); this module only says what the page asks for.
//
// The page is a public client in the browser (RFC 10017's "browser-based OAuth client"): no
// refresh token is asked for, the access token lives in this tab only (memory and
// sessionStorage, see session.js), and when it runs out the customer goes through the provider
// again, which signs them straight back in while their session there lasts.

import * as oauth from "./vendor/oauth4webapi.js";

const PENDING = "prefs.oidc-pending"; // this tab's sign-in in progress: verifier, state, nonce, view
const ID_TOKEN = "prefs.oidc-id-token"; // kept only to name the session when signing out

const settings = (() => {
  const data = document.body.dataset;
  if (!data.oidcIssuer || !data.oidcClientId) return null;
  return {
    issuer: new URL(data.oidcIssuer),
    client: { client_id: data.oidcClientId },
    scopes: data.oidcScopes || "openid",
    redirect: new URL(data.oidcRedirectPath || "/", window.location.origin).href,
  };
})();

export const enabled = () => settings !== null;

/** Plain http is refused, except for a provider on this machine (development and tests). */
function requestOptions() {
  const { protocol, hostname } = settings.issuer;
  const loopback = protocol === "http:" && ["127.0.0.1", "localhost", "[::1]"].includes(hostname);
  return loopback ? { [oauth.allowInsecureRequests]: true } : {};
}

let discovered = null;
async function provider() {
  if (discovered === null) {
    const response = await oauth.discoveryRequest(settings.issuer, { ...requestOptions(), algorithm: "oidc" });
    discovered = await oauth.processDiscoveryResponse(settings.issuer, response);
  }
  return discovered;
}

function storage() {
  try { return window.sessionStorage; } catch { return null; }
}

/** Send the customer to the provider; they come back to ``view``. */
export async function signIn(view) {
  const as = await provider();
  const verifier = oauth.generateRandomCodeVerifier();
  const state = oauth.generateRandomState();
  const nonce = oauth.generateRandomNonce();
  storage()?.setItem(PENDING, JSON.stringify({ verifier, state, nonce, view }));
  const url = new URL(as.authorization_endpoint);
  for (const [name, value] of Object.entries({
    client_id: settings.client.client_id,
    redirect_uri: settings.redirect,
    response_type: "code",
    scope: settings.scopes,
    code_challenge: await oauth.calculatePKCECodeChallenge(verifier),
    code_challenge_method: "S256",
    state,
    nonce,
  })) url.searchParams.set(name, value);
  window.location.assign(url.href);
}

/** Whether the address is the provider sending the customer back. */
export function returning() {
  if (!enabled()) return false;
  const here = new URL(window.location.href);
  return here.href.split(/[?#]/)[0] === settings.redirect.split(/[?#]/)[0]
    && ["code", "state", "error"].some((name) => here.searchParams.has(name));
}

/**
 * Finish a sign-in the provider sent back: check `state`, trade the code (with the PKCE verifier)
 * for tokens, check the ID token's `nonce`. Returns the access token and the view to show; throws
 * an Error saying why not. The code leaves the address bar at once, whatever happens.
 */
export async function completeSignIn() {
  const here = new URL(window.location.href);
  const kept = storage()?.getItem(PENDING);
  storage()?.removeItem(PENDING);
  window.history.replaceState(null, "", new URL(settings.redirect).pathname);
  if (!kept) throw new Error("This sign-in was not started in this tab, or was used already.");
  const pending = JSON.parse(kept);
  const as = await provider();
  const params = oauth.validateAuthResponse(as, settings.client, here, pending.state);
  const response = await oauth.authorizationCodeGrantRequest(
    as, settings.client, oauth.None(), params, settings.redirect, pending.verifier, requestOptions());
  const tokens = await oauth.processAuthorizationCodeResponse(
    as, settings.client, response, { expectedNonce: pending.nonce, requireIdToken: true });
  if (tokens.id_token) storage()?.setItem(ID_TOKEN, tokens.id_token);
  return { accessToken: tokens.access_token, view: pending.view };
}

/** Where to send the customer to end their session at the provider too, if it has such an end. */
export async function endSessionUrl() {
  const idToken = storage()?.getItem(ID_TOKEN);
  storage()?.removeItem(ID_TOKEN);
  let as;
  try { as = await provider(); } catch { return null; }
  if (!as.end_session_endpoint) return null;
  const url = new URL(as.end_session_endpoint);
  url.searchParams.set("client_id", settings.client.client_id);
  url.searchParams.set("post_logout_redirect_uri", settings.redirect);
  if (idToken) url.searchParams.set("id_token_hint", idToken);
  return url.href;
}
