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

async function call(path, init) {
  let resp;
  try {
    resp = await fetch(path, init);
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
    throw new ApiError(resp.status, (err && err.code) || `http_${resp.status}`,
      (err && err.message) || `The query service answered HTTP ${resp.status}.`);
  }
  if (body === null) {
    throw new ApiError(resp.status, 'bad_body', 'The query service answered without JSON.');
  }
  return body;
}

const enc = encodeURIComponent;

export const getTrace = (id) => call(`/api/v1/traces/${enc(id)}`);
export const getLineage = (id, direction, depth) =>
  call(`/api/v1/traces/${enc(id)}/lineage?direction=${enc(direction)}&depth=${enc(depth)}`);
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
