// The v1 query API, as the pages call it: JSON in and out, and every failure turned into an
// ApiError carrying the API's own error message, so a page can always say what went wrong.

/** A failed API call: the HTTP status, the API's error code and its message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// A bearer token for a query service with `auth.tokens` set, kept for this tab only
// (sessionStorage: gone when the tab closes, never sent to another origin).
const TOKEN_KEY = 'datatracing.token';

/** The token the user gave this tab, or null. */
export const savedToken = () => sessionStorage.getItem(TOKEN_KEY);

/** Keeps `token` for this tab's API calls; null or empty forgets it. */
export function saveToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

async function call(path, init = {}) {
  const headers = new Headers(init.headers || {});
  const token = savedToken();
  if (token) headers.set('Authorization', `Bearer ${token}`);
  let resp;
  try {
    resp = await fetch(path, { ...init, headers });
  } catch (e) {
    throw new ApiError(0, 'unreachable', `The query service did not answer (${e.message}).`);
  }
  let body = null;
  try {
    body = await resp.json();
  } catch {
    // An answer without a JSON body; the status says enough.
  }
  if (!resp.ok) {
    const err = body && body.error;
    const failure = new ApiError(resp.status, (err && err.code) || `http_${resp.status}`,
      (err && err.message) || `The query service answered HTTP ${resp.status}.`);
    // No token, a wrong one, or one without the query scope: the app asks for a token
    // (app.js), whichever page made the call.
    if (resp.status === 401 || resp.status === 403) {
      window.dispatchEvent(new CustomEvent('datatracing-auth', { detail: failure }));
    }
    throw failure;
  }
  if (body === null) {
    throw new ApiError(resp.status, 'bad_body', 'The query service answered without JSON.');
  }
  return body;
}

const enc = encodeURIComponent;

export const getTrace = (id) => call(`/api/v1/traces/${enc(id)}`);
export const getLineage = (id, direction, depth, dataset) =>
  call(`/api/v1/traces/${enc(id)}/lineage?direction=${enc(direction)}&depth=${enc(depth)}${dataset ? `&dataset=${enc(dataset)}` : ''}`);
export const searchTraces = (body) => call('/api/v1/traces/search', {
  method: 'POST',
  headers: { 'Content-Type': 'application/json' },
  body: JSON.stringify(body),
});
export const getServices = () => call('/api/v1/services');
export const getOperations = (service) => call(`/api/v1/services/${enc(service)}/operations`);
export const getDependencies = (start, end) => {
  const q = new URLSearchParams();
  if (start) q.set('start', start);
  if (end) q.set('end', end);
  return call(`/api/v1/dependencies?${q}`);
};
