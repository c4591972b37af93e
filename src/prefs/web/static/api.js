// The JSON API, as the signed-in customer: one place that adds the token and reads problems.

import { expiresWithin, token } from "./session.js";

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }

  /** The sentence to show a person. */
  get sentence() {
    if (this.status === 0) return this.problem.detail;
    const detail = this.problem.detail || this.problem.title || "Something went wrong.";
    return detail;
  }

  /** Field-level messages from a 400, if the service gave any. */
  get fieldErrors() {
    return Array.isArray(this.problem.errors) ? this.problem.errors : [];
  }
}

let whenSignedOut = () => {};
let whenExpiring = null;

/** Called instead of a request when the token is about to run out (then the request is not sent). */
export function onExpiring(handler) {
  whenExpiring = handler;
}

/** Called with the problem when the service no longer accepts the token (401). */
export function onSignedOut(handler) {
  whenSignedOut = handler;
}

export async function request(method, path, { body, headers = {}, raw = false } = {}) {
  if (whenExpiring !== null && expiresWithin(30)) {
    await whenExpiring();
    throw new ApiError(401, { title: "Signing in again", detail: "Your sign-in ran out: signing you in again." });
  }
  const init = {
    method,
    headers: { Accept: "application/json", ...headers },
    cache: "no-store",
    credentials: "omit",
    referrerPolicy: "no-referrer",
  };
  const bearer = token();
  if (bearer) init.headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, {
      title: "No connection",
      detail: "The locker could not be reached. Check your connection and try again.",
    });
  }
  if (!response.ok) {
    let problem = {};
    try {
      problem = await response.json();
    } catch {
      problem = { title: response.statusText };
    }
    const error = new ApiError(response.status, problem);
    if (response.status === 401) whenSignedOut(error);
    throw error;
  }
  if (raw) return response;
  if (response.status === 204) return null;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path) => request("GET", path);
export const post = (path, body, headers) => request("POST", path, { body, headers });
export const put = (path, body) => request("PUT", path, { body });
export const patch = (path, body, headers) => request("PATCH", path, { body, headers });
export const del = (path, headers) => request("DELETE", path, { headers });

/** The If-Match header for a preference at ``version``. */
export const ifMatch = (version) => ({ "If-Match": `"${version}"` });

/** A fresh Idempotency-Key (random, 128 bits). */
export function idempotencyKey() {
  const bytes = new Uint8Array(16);
  window.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
