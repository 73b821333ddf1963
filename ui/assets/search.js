// The search page: the filters of the v1 search (service, operation, step kind, status,
// duration range, time window as a preset or absolute, a dataset read or written, attribute
// filters), the results as a
// list and as a duration-over-time scatter plot (a point opens its trace), and paging with
// the API's cursors. The URL holds the whole query, so a search can be shared or bookmarked.
import { getOperations, getServices, searchTraces } from './api.js';
import {
  el, errorBox, extent, fmtDuration, fmtTime, localToRfc3339, messageBox, parseTs, PRESETS,
  rfc3339ToLocal, STATUSES, STEP_KINDS, svg, traceHref, windowFrom,
} from './util.js';

const ATTR_RE = /^\s*([^\s!=<>~]+)\s*(?:(!=|>=|<=|=|>|<|~)\s*(.*?))?\s*$/;

/** `key`, `key=value`, `key!=value`, `key>5` (>=, <, <= compare numbers), `key~regex`. */
export function parseAttributeFilter(text) {
  const m = ATTR_RE.exec(text);
  if (!m) return null;
  const [, key, op, value] = m;
  if (!op) return { key, op: 'exists' };
  if (op === '~') return { key, op: 'regex', value };
  if (['>', '>=', '<', '<='].includes(op)) {
    const n = Number(value);
    return Number.isFinite(n) && value !== '' ? { key, op, value: n } : null;
  }
  return { key, op, value };
}

function select(name, label, options, value) {
  return el('label', { class: 'field' }, el('span', { text: label }),
    el('select', { name, id: `f-${name}` }, options.map(([v, t]) => el('option', { value: v, selected: v === value }, t))));
}
function input(name, label, value, attrs = {}) {
  return el('label', { class: 'field' }, el('span', { text: label }),
    el('input', { name, id: `f-${name}`, value: value || '', autocomplete: 'off', ...attrs }));
}

export async function renderSearch(main, params) {
  const p = (k) => params.get(k) || '';
  const form = el('form', { class: 'search-form', id: 'search-form', 'aria-label': 'Search traces' });
  const serviceSel = select('service', 'Service', [['', 'Any service']], p('service'));
  const opSel = select('operation', 'Operation', [['', 'Any operation']], p('operation'));
  const custom = !!(p('start') || p('end')) && !p('lookback');
  const windowSel = select('window', 'Time window', [['', 'Any time'], ...PRESETS.map(([k, t]) => [k, t]), ['custom', 'Absolute…']], custom ? 'custom' : p('lookback'));
  const startIn = input('start', 'From', rfc3339ToLocal(p('start')), { type: 'datetime-local', step: 1 });
  const endIn = input('end', 'To', rfc3339ToLocal(p('end')), { type: 'datetime-local', step: 1 });
  const absolute = el('div', { class: 'absolute' }, startIn, endIn);
  absolute.hidden = !custom;
  windowSel.querySelector('select').addEventListener('change', (ev) => { absolute.hidden = ev.target.value !== 'custom'; });

  const attrBox = el('div', { class: 'attrs' });
  const addAttr = (v = '') => {
    const i = attrBox.children.length + 1;
    const row = el('div', { class: 'attr-row' },
      el('input', { name: 'attr', value: v, 'aria-label': `Attribute filter ${i}`, placeholder: 'dataset=orders · records>1000 · late · table~^raw_', autocomplete: 'off' }),
      el('button', { type: 'button', class: 'small', 'aria-label': `Remove attribute filter ${i}`, onclick: () => row.remove() }, '×'));
    attrBox.append(row);
  };
  for (const a of params.getAll('attr')) addAttr(a);
  if (!attrBox.children.length) addAttr();

  form.append(
    el('div', { class: 'row' },
      serviceSel, opSel,
      select('kind', 'Step kind', [['', 'Any kind'], ...STEP_KINDS.map((k) => [k, k.toLowerCase()])], p('kind')),
      select('status', 'Status', [['', 'Any status'], ...STATUSES.map((s) => [s, s])], p('status')),
      input('min_duration', 'Min duration', p('min_duration'), { placeholder: 'e.g. 500ms', size: 8 }),
      input('max_duration', 'Max duration', p('max_duration'), { placeholder: 'e.g. 2m', size: 8 }),
      input('dataset', 'Dataset (read or written)', p('dataset'), { placeholder: 'e.g. warehouse.orders', size: 18 }),
      windowSel, absolute),
    el('div', { class: 'row' },
      el('fieldset', { class: 'attr-set' }, el('legend', { text: 'Attribute filters (all must match)' }), attrBox,
        el('button', { type: 'button', class: 'small', onclick: () => addAttr() }, '+ filter')),
      select('limit', 'Per page', [['20', '20'], ['50', '50'], ['100', '100']], p('limit') || '20'),
      el('div', { class: 'actions' }, el('button', { type: 'submit', class: 'primary', id: 'search-submit' }, 'Search'),
        el('a', { href: '/ui/search', class: 'button' }, 'Reset'))));

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const fd = new FormData(form);
    const q = new URLSearchParams();
    for (const k of ['service', 'operation', 'kind', 'status', 'min_duration', 'max_duration', 'dataset']) {
      const v = String(fd.get(k) || '').trim();
      if (v) q.set(k, v);
    }
    const w = String(fd.get('window') || '');
    if (w === 'custom') {
      const s = localToRfc3339(String(fd.get('start') || ''));
      const e = localToRfc3339(String(fd.get('end') || ''));
      if (s) q.set('start', s);
      if (e) q.set('end', e);
    } else if (w) q.set('lookback', w);
    for (const a of fd.getAll('attr')) if (String(a).trim()) q.append('attr', String(a).trim());
    if (fd.get('limit') && fd.get('limit') !== '20') q.set('limit', String(fd.get('limit')));
    location.assign(`/ui/search${q.toString() ? `?${q}` : ''}`);
  });

  const results = el('section', { id: 'results', 'aria-live': 'polite', 'aria-label': 'Results' }, messageBox('Searching…', 'loading'));
  main.replaceChildren(el('h1', { text: 'Search traces' }), form, results);

  // The name lists fill in while the search runs; a failure there is shown, not fatal.
  getServices().then((r) => {
    const s = serviceSel.querySelector('select');
    for (const name of r.services) s.append(el('option', { value: name, selected: name === p('service') }, name));
    if (p('service') && !r.services.includes(p('service'))) s.append(el('option', { value: p('service'), selected: true }, p('service')));
  }).catch((e) => form.append(errorBox(e, 'Could not list services:')));
  const loadOps = (service) => {
    const s = opSel.querySelector('select');
    s.replaceChildren(el('option', { value: '' }, 'Any operation'));
    if (!service) return;
    getOperations(service).then((r) => {
      const names = [...new Set(r.operations.map((o) => o.name))];
      for (const n of names) s.append(el('option', { value: n, selected: n === p('operation') }, n));
      if (p('operation') && !names.includes(p('operation'))) s.append(el('option', { value: p('operation'), selected: true }, p('operation')));
    }).catch((e) => form.append(errorBox(e, 'Could not list operations:')));
  };
  serviceSel.querySelector('select').addEventListener('change', (ev) => loadOps(ev.target.value));
  loadOps(p('service'));

  const body = {};
  for (const k of ['service', 'operation', 'kind', 'status', 'min_duration', 'max_duration', 'dataset']) if (p(k)) body[k] = p(k);
  const w = windowFrom(params);
  if (w.start) body.start = w.start;
  if (w.end) body.end = w.end;
  if (p('limit')) body.limit = Number(p('limit'));
  if (p('cursor')) body.cursor = p('cursor');
  const attrs = [];
  for (const a of params.getAll('attr')) {
    const f = parseAttributeFilter(a);
    if (!f) {
      results.replaceChildren(errorBox({ message: `“${a}” is not a filter: write key, key=value, key!=value, key>number or key~regex.` }, 'Bad attribute filter:'));
      main.dataset.ready = 'search';
      return;
    }
    attrs.push(f);
  }
  if (attrs.length) body.attributes = attrs;
  let page;
  try {
    page = await searchTraces(body);
  } catch (e) {
    results.replaceChildren(errorBox(e, 'Search failed:'));
    main.dataset.ready = 'search';
    return;
  }
  results.replaceChildren(...renderResults(page, params));
  main.dataset.ready = 'search';
}

function renderResults(page, params) {
  const traces = page.traces;
  const out = [];
  if (!traces.length) {
    out.push(messageBox(params.get('cursor') ? 'No more traces.' : 'No traces match. Widen the time window or remove a filter.', 'empty'));
  } else {
    out.push(el('p', { class: 'count', text: `${traces.length} trace${traces.length === 1 ? '' : 's'}${params.get('cursor') ? ' (later page)' : ''}, newest first` }));
    out.push(scatter(traces));
    out.push(table(traces));
  }
  const nav = el('nav', { class: 'pager', 'aria-label': 'Pages' });
  if (params.get('cursor')) {
    const first = new URLSearchParams(params);
    first.delete('cursor');
    nav.append(el('a', { href: `/ui/search?${first}`, class: 'button', id: 'first-page' }, '« First page'));
  }
  if (page.next_cursor) {
    const next = new URLSearchParams(params);
    next.set('cursor', page.next_cursor);
    nav.append(el('a', { href: `/ui/search?${next}`, class: 'button', id: 'next-page' }, 'Next page »'));
  }
  out.push(nav);
  return out;
}

function table(traces) {
  return el('table', { class: 'results', id: 'result-table' },
    el('thead', {}, el('tr', {}, ['Trace root', 'Services', 'Spans', 'Errors', 'Duration', 'Start'].map((h) => el('th', { scope: 'col', text: h })))),
    el('tbody', {}, traces.map((t) => el('tr', { class: t.error_count ? 'failed' : '', 'data-trace-id': t.trace_id },
      el('td', {}, el('a', { href: traceHref(t.trace_id), class: 'trace-link' }, el('strong', { text: t.root_service }), `: ${t.root_operation}`),
        el('div', { class: 'muted mono', text: t.trace_id })),
      el('td', { text: t.services.join(', ') }),
      el('td', { class: 'num', text: String(t.span_count) }),
      el('td', { class: `num${t.error_count ? ' bad' : ''}`, text: String(t.error_count) }),
      el('td', { class: 'num', text: fmtDuration(t.duration_nanos) }),
      el('td', { text: fmtTime(parseTs(t.start_time)) })))));
}

/** Duration over start time; a point is a link to its trace. */
function scatter(traces) {
  const W = 960;
  const H = 190;
  const M = { l: 64, r: 16, t: 12, b: 30 };
  const xs = traces.map((t) => parseTs(t.start_time));
  const ys = traces.map((t) => t.duration_nanos);
  const [x0, x1] = extent(xs);
  const [, y1] = extent(ys);
  const sx = (x) => M.l + ((x - x0) / (x1 - x0)) * (W - M.l - M.r);
  const sy = (y) => H - M.b - (y / (y1 || 1)) * (H - M.t - M.b);
  const plot = svg('svg', { class: 'scatter', id: 'scatter', viewBox: `0 0 ${W} ${H}`, role: 'group', 'aria-label': 'Trace duration over start time; each point opens its trace' },
    svg('line', { x1: M.l, y1: H - M.b, x2: W - M.r, y2: H - M.b, class: 'axis' }),
    svg('line', { x1: M.l, y1: M.t, x2: M.l, y2: H - M.b, class: 'axis' }),
    svg('text', { x: M.l - 6, y: M.t + 8, class: 'tick', 'text-anchor': 'end', text: fmtDuration(y1) }),
    svg('text', { x: M.l - 6, y: H - M.b, class: 'tick', 'text-anchor': 'end', text: '0' }),
    svg('text', { x: M.l, y: H - 8, class: 'tick', text: fmtTime(x0) }),
    svg('text', { x: W - M.r, y: H - 8, class: 'tick', 'text-anchor': 'end', text: fmtTime(x1) }));
  traces.forEach((t, i) => {
    plot.append(svg('a', { href: traceHref(t.trace_id), class: `point${t.error_count ? ' failed' : ''}`, 'data-trace-id': t.trace_id, 'aria-label': `${t.root_service}: ${t.root_operation}, ${fmtDuration(t.duration_nanos)}, ${t.error_count} errors` },
      svg('circle', { cx: sx(xs[i]).toFixed(1), cy: sy(ys[i]).toFixed(1), r: 6 }),
      svg('title', { text: `${t.root_service}: ${t.root_operation}\n${fmtDuration(t.duration_nanos)} · ${t.span_count} spans · ${t.error_count} errors` })));
  });
  return el('figure', { class: 'scatter-fig' }, plot, el('figcaption', { class: 'muted', text: 'Duration over start time; red points have errors. Click a point to open the trace.' }));
}

