// Small helpers the pages share: building DOM and SVG without HTML strings (no data is ever
// parsed as markup), formatting times and durations, and the time-window presets.

/** The SVG namespace: an identifier for createElementNS, never fetched. */
const SVG_NS = 'http://www.w3.org/2000/svg';

function apply(node, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') node.textContent = String(v);
    else if (k === 'class') node.setAttribute('class', v);
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

/** An HTML element: el('a', {href: '/x', class: 'y'}, 'text', child). */
export const el = (tag, attrs, ...children) => apply(document.createElement(tag), attrs, children);
/** An SVG element. */
export const svg = (tag, attrs, ...children) => apply(document.createElementNS(SVG_NS, tag), attrs, children);

/** An RFC 3339 timestamp (nanosecond digits allowed) as microseconds since the epoch. */
export function parseTs(s) {
  const m = /^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$/.exec(s || '');
  if (!m) return NaN;
  const whole = Date.parse(m[1] + m[3]);
  const frac = ((m[2] || '') + '000000').slice(0, 6);
  return whole * 1000 + Number(frac);
}

/** Nanoseconds as a short human duration: 850ns, 12.3µs, 4.56ms, 1.2s, 3m 4s, 2h 5m. */
export function fmtDuration(ns) {
  if (!Number.isFinite(ns)) return '–';
  const a = Math.abs(ns);
  if (a < 1e3) return `${Math.round(ns)}ns`;
  if (a < 1e6) return `${+(ns / 1e3).toPrecision(3)}µs`;
  if (a < 1e9) return `${+(ns / 1e6).toPrecision(3)}ms`;
  if (a < 60e9) return `${+(ns / 1e9).toPrecision(3)}s`;
  if (a < 3600e9) return `${Math.floor(ns / 60e9)}m ${Math.round((ns % 60e9) / 1e9)}s`;
  return `${Math.floor(ns / 3600e9)}h ${Math.round((ns % 3600e9) / 60e9)}m`;
}

/** A timestamp (microseconds) as local date and time with milliseconds. */
export function fmtTime(us) {
  if (!Number.isFinite(us)) return '–';
  const d = new Date(us / 1000);
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
    `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

/** The pipeline step kinds and OpenTelemetry kinds a span may have, in pipeline order. */
export const STEP_KINDS = ['INGEST', 'TRANSFORM', 'ENRICH', 'VALIDATE', 'JOIN', 'AGGREGATE',
  'MATERIALIZE', 'PUBLISH', 'SERVE', 'INTERNAL', 'CLIENT', 'SERVER', 'PRODUCER', 'CONSUMER'];
export const STATUSES = ['OK', 'ERROR', 'TIMEOUT', 'CANCELLED', 'UNSET'];

/** The status code of a span (the API writes `"OK"` or `{code, message}`). */
export const statusCode = (s) => (typeof s.status === 'string' ? s.status : s.status?.code) || 'UNSET';
export const statusMessage = (s) => (typeof s.status === 'object' ? s.status?.message : null) || '';
export const isFailure = (code) => code === 'ERROR' || code === 'TIMEOUT';

/** Relative time-window presets (URL `lookback=`), in milliseconds. */
export const PRESETS = [['15m', 'Last 15 minutes', 15 * 60e3], ['1h', 'Last hour', 3600e3],
  ['6h', 'Last 6 hours', 6 * 3600e3], ['24h', 'Last 24 hours', 24 * 3600e3],
  ['7d', 'Last 7 days', 7 * 86400e3], ['30d', 'Last 30 days', 30 * 86400e3]];

/**
 * The time window a page's URL asks for: `start`/`end` (absolute, RFC 3339) or `lookback`
 * (a preset) ending now. Returns RFC 3339 strings or null.
 */
export function windowFrom(params) {
  const lookback = params.get('lookback');
  const preset = PRESETS.find(([k]) => k === lookback);
  if (preset) {
    const end = new Date();
    return { start: new Date(end.getTime() - preset[2]).toISOString(), end: end.toISOString() };
  }
  return { start: params.get('start') || null, end: params.get('end') || null };
}

/** `<input type="datetime-local">` value (local time) to RFC 3339 (UTC), or ''. */
export function localToRfc3339(v) {
  if (!v) return '';
  const t = new Date(v);
  return Number.isNaN(t.getTime()) ? '' : t.toISOString();
}

/** RFC 3339 to a `datetime-local` value in local time, or ''. */
export function rfc3339ToLocal(v) {
  const us = parseTs(v);
  if (!Number.isFinite(us)) return '';
  const d = new Date(us / 1000 - new Date(us / 1000).getTimezoneOffset() * 60e3);
  return d.toISOString().slice(0, 19);
}

/** A message box for an error: never a blank page. */
export function errorBox(err, what) {
  const box = el('div', { class: 'message error', role: 'alert' },
    el('strong', { text: what }), ' ', err.message || String(err));
  if (err.status === 404) box.classList.add('not-found');
  return box;
}

/** A plain message box. */
export const messageBox = (text, cls = '') => el('div', { class: `message ${cls}`, role: 'status' }, text);

/** The link to a trace's page. */
export const traceHref = (id, extra = '') => `/ui/trace/${encodeURIComponent(id)}${extra}`;

/** The bounds of a set of numbers, widened when empty or flat. */
export function extent(values) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (!Number.isFinite(lo)) return [0, 1];
  if (lo === hi) return [lo - 1, hi + 1];
  return [lo, hi];
}
