// The management API, called with the token kept in this tab's session storage.

const KEY = "cairn.mgmt-token";

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

/** The node refused the token (401). */
export class Unauthorized extends Error {}

/** Any other error answer: `status` and the API's own message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Server minus browser clock, in ms, from the responses' Date header:
// expiry times are the node's, and the browser's clock may be elsewhere.
let skew = 0;

/** The node's clock now, in Unix seconds. */
export function serverNow() {
  return (Date.now() + skew) / 1000;
}

/**
 * Call `path` (relative to the API root, e.g. "peers/pending"). Resolves
 * with the decoded JSON, or the Response itself with {raw: true}.
 */
export async function call(method, path, { body, raw = false, bearer } = {}) {
  const headers = { Authorization: "Bearer " + (bearer ?? token.get() ?? "") };
  const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  // The API is the parent of /ui/: relative, so a reverse proxy may mount both under a prefix.
  const response = await fetch(new URL("../" + path, document.baseURI), init);
  const date = Date.parse(response.headers.get("Date") || "");
  if (!Number.isNaN(date)) skew = date - Date.now();
  if (response.status === 401) throw new Unauthorized("the node refused the token");
  if (!response.ok) {
    let message = response.statusText;
    try {
      message = (await response.json()).error || message;
    } catch {
      // not JSON: keep the status text
    }
    throw new ApiError(response.status, message);
  }
  return raw ? response : response.json();
}
