// The trace page: the DAG view and the timeline of one trace, kept in sync through one
// selection (also in the URL as `span=`), the selected span's details, the sampling rule
// that kept the trace, and the traces upstream and downstream of it.
import { ApiError, getLineage, getTrace } from './api.js';
import { clip, drawGraph } from './dag.js';
import { drawTimeline } from './timeline.js';
import {
  el, errorBox, fmtDuration, fmtTime, isFailure, messageBox, parseTs, statusCode, statusMessage,
  STEP_KINDS, svg, traceHref,
} from './util.js';

/** Above this many spans the DAG starts grouped by service (the spans view stays one click away). */
export const COLLAPSE_ABOVE = 500;
const EDGE_TITLES = {
  PARENT_CHILD: 'parent → child', CHILD_OF: 'CHILD_OF link', FOLLOWS_FROM: 'FOLLOWS_FROM link', DATA_DEPENDENCY: 'DATA_DEPENDENCY link',
};
const EDGE_MARKERS = { DATA_DEPENDENCY: 'arrow-data', FOLLOWS_FROM: 'arrow-follows' };

export async function renderTrace(main, id, params) {
  main.replaceChildren(messageBox(`Loading trace ${id}…`, 'loading'));
  let dag;
  try {
    dag = await getTrace(id);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      main.replaceChildren(el('h1', { text: 'Trace not found' }),
        el('div', { class: 'message error not-found', role: 'alert' },
          `No trace with id ${id} is stored. It may have been sampled out or removed by retention.`),
        el('p', {}, el('a', { href: '/ui/search' }, 'Search traces')));
      main.dataset.ready = 'trace';
      return;
    }
    main.replaceChildren(el('h1', { text: 'Trace' }), errorBox(e, 'Could not load the trace:'));
    main.dataset.ready = 'trace';
    return;
  }
  document.title = `${dag.summary.root_service}: ${dag.summary.root_operation} · DataTracing`;
  const ctx = buildContext(dag);
  const state = { selected: null, view: params.get('view') === 'timeline' ? 'timeline' : 'dag' };

  const detail = el('aside', { class: 'detail', id: 'detail', 'aria-label': 'Selected span', 'aria-live': 'polite' },
    el('p', { class: 'hint', text: 'Select a span (click it, or focus it and press Enter) to see its attributes, events, links and status.' }));
  const dagPanel = el('section', { id: 'dag-panel', class: 'panel', role: 'tabpanel', 'aria-label': 'DAG' });
  const timelinePanel = el('section', { id: 'timeline-panel', class: 'panel', role: 'tabpanel', 'aria-label': 'Timeline' });
  const tabs = el('div', { class: 'tabs', role: 'tablist', 'aria-label': 'Trace views' });
  const tabButtons = {};
  for (const [key, text] of [['dag', 'DAG'], ['timeline', 'Timeline']]) {
    tabButtons[key] = el('button', { type: 'button', role: 'tab', id: `tab-${key}`, onclick: () => show(key) }, text);
    tabs.append(tabButtons[key]);
  }
  const show = (key) => {
    state.view = key;
    for (const [k, b] of Object.entries(tabButtons)) b.setAttribute('aria-selected', String(k === key));
    dagPanel.hidden = key !== 'dag';
    timelinePanel.hidden = key !== 'timeline';
    const url = new URL(location.href);
    if (key === 'dag') url.searchParams.delete('view'); else url.searchParams.set('view', key);
    history.replaceState(null, '', url);
    if (key === 'dag' && dagView.current) dagView.current.fit();
  };

  // Selection: one span, shown in the DAG, the timeline and the detail panel.
  const dagView = { current: null, mode: null };
  let timeline = null;
  const select = (spanId, from) => {
    const span = ctx.byId.get(spanId);
    if (!span) return;
    state.selected = spanId;
    for (const n of main.querySelectorAll('.selected')) n.classList.remove('selected');
    const node = dagView.mode === 'spans' ? dagView.current?.nodeElement(spanId) : null;
    if (node) {
      node.classList.add('selected');
      if (from !== 'dag') dagView.current.focusNode(spanId);
    }
    timeline?.select(spanId, from !== 'timeline');
    detail.replaceChildren(...spanDetail(span, ctx, dag.trace_id));
    const url = new URL(location.href);
    url.searchParams.set('span', spanId);
    history.replaceState(null, '', url);
  };
  const selectGroup = (key, groupBy) => {
    for (const n of main.querySelectorAll('.selected')) n.classList.remove('selected');
    dagView.current?.nodeElement(key)?.classList.add('selected');
    detail.replaceChildren(...groupDetail(key, groupBy, ctx, select));
  };

  const modeSelect = el('select', { id: 'dag-mode', 'aria-label': 'Group the DAG' },
    el('option', { value: 'spans' }, 'Every span'),
    el('option', { value: 'service' }, 'Grouped by service'),
    el('option', { value: 'kind' }, 'Grouped by step kind'));
  const graphHost = el('div', { class: 'graph-host' });
  const drawDag = (mode) => {
    dagView.mode = mode;
    modeSelect.value = mode;
    const t0 = performance.now();
    dagView.current = mode === 'spans'
      ? drawSpanDag(ctx, (sid) => select(sid, 'dag'))
      : drawGroupedDag(ctx, mode, (key) => selectGroup(key, mode));
    graphHost.replaceChildren(dagView.current.element);
    dagView.current.fit();
    graphHost.dataset.mode = mode;
    graphHost.dataset.renderMs = String(Math.round(performance.now() - t0));
    graphHost.dataset.layoutMs = String(Math.round(dagView.current.layoutMs));
    if (state.selected && mode === 'spans') select(state.selected, 'timeline');
  };
  modeSelect.addEventListener('change', () => drawDag(modeSelect.value));
  dagPanel.append(
    el('div', { class: 'toolbar' },
      el('label', { for: 'dag-mode' }, 'Show '), modeSelect,
      dag.spans.length > COLLAPSE_ABOVE ? el('span', { class: 'hint' }, ` ${dag.spans.length} spans: grouped by default; pick “Every span” to draw them all.`) : null),
    legend(), graphHost);

  timeline = drawTimeline(ctx, (sid) => select(sid, 'timeline'));
  timelinePanel.append(timeline.element);

  main.replaceChildren(
    header(dag, ctx),
    acrossTraces(dag),
    el('div', { class: 'trace-body' },
      el('div', { class: 'views' }, tabs, dagPanel, timelinePanel),
      detail));
  show(state.view);
  drawDag(dag.spans.length > COLLAPSE_ABOVE ? 'service' : 'spans');
  const want = params.get('span');
  if (want && ctx.byId.has(want)) select(want, 'url');
  main.dataset.ready = 'trace';
}

/** Lookups the views share. */
function buildContext(dag) {
  const byId = new Map(dag.spans.map((s) => [s.span_id, s]));
  const selfNs = new Map((dag.self_times || []).map((t) => [t.span_id, t.self_nanos]));
  const critical = new Set(dag.critical_path || []);
  const criticalEdges = new Set();
  // The path's order does not matter here: an edge is on it when both ends are neighbours.
  for (let i = 1; i < (dag.critical_path || []).length; i++) {
    criticalEdges.add(`${dag.critical_path[i - 1]}>${dag.critical_path[i]}`);
    criticalEdges.add(`${dag.critical_path[i]}>${dag.critical_path[i - 1]}`);
  }
  const startUs = new Map(dag.spans.map((s) => [s.span_id, parseTs(s.start_time)]));
  const endUs = new Map(dag.spans.map((s) => [s.span_id, parseTs(s.end_time)]));
  const durNs = (s) => (endUs.get(s.span_id) - startUs.get(s.span_id)) * 1000;
  return { dag, byId, selfNs, critical, criticalEdges, startUs, endUs, durNs };
}

function header(dag, ctx) {
  const s = dag.summary;
  const sampled = samplingOf(dag.spans);
  const facts = el('dl', { class: 'facts' },
    fact('Trace id', el('code', { text: dag.trace_id })),
    fact('Duration', fmtDuration(s.duration_nanos)),
    fact('Started', fmtTime(parseTs(s.start_time))),
    fact('Spans', String(s.span_count)),
    fact('Errors', el('span', { class: s.error_count ? 'bad' : '', text: String(s.error_count) })),
    fact('Services', s.services.join(', ')),
    fact('Critical path', `${ctx.critical.size} spans`),
    fact('Sampling', sampled
      ? el('span', { id: 'sampling', text: `kept by rule “${sampled.rule}”${sampled.rate !== undefined ? ` (rate ${sampled.rate})` : ''}` })
      : el('span', { id: 'sampling', class: 'muted', text: 'no sampling rule recorded (kept unsampled)' })));
  const warnings = [];
  if (dag.truncated) warnings.push(messageBox(`Only the first ${dag.max_spans} spans (by start time) are shown: the trace is larger than query.max_trace_spans.`, 'warn'));
  if (dag.orphans?.length) warnings.push(messageBox(`${dag.orphans.length} span(s) name a parent that is not stored (drawn as roots).`, 'warn'));
  if (dag.cycles?.length) warnings.push(messageBox(`${dag.cycles.length} span(s) are in a parent cycle.`, 'warn'));
  return el('div', { class: 'trace-head' },
    el('h1', {}, `${s.root_service}: `, el('span', { class: 'op', text: s.root_operation })), facts, ...warnings);
}

const fact = (k, v) => el('div', {}, el('dt', { text: k }), el('dd', {}, v));

/** The rule that kept the trace: the attribute on the root, else on any span. */
function samplingOf(spans) {
  const sorted = [...spans].sort((a, b) => (a.parent_id ? 1 : 0) - (b.parent_id ? 1 : 0));
  for (const s of sorted) {
    const a = s.attributes || {};
    if (a['datatracing.sampling.rule'] !== undefined) {
      return { rule: String(a['datatracing.sampling.rule']), rate: a['datatracing.sampling.rate'] };
    }
  }
  return null;
}

function legend() {
  return el('div', { class: 'legend', 'aria-label': 'Legend' },
    el('span', { class: 'lg-edge pc' }, 'parent → child'),
    el('span', { class: 'lg-edge dd' }, 'DATA_DEPENDENCY'),
    el('span', { class: 'lg-edge ff' }, 'FOLLOWS_FROM / CHILD_OF link'),
    el('span', { class: 'lg-edge cp' }, 'critical path'),
    el('span', { class: 'lg-node err' }, 'error / timeout'),
    ...STEP_KINDS.slice(0, 9).map((k) => el('span', { class: `lg-kind kind-${k}` }, k.toLowerCase())));
}

function drawSpanDag(ctx, onSelect) {
  const { dag } = ctx;
  const W = 210;
  const H = 58;
  const nodes = dag.spans.map((s) => {
    const code = statusCode(s);
    const crit = ctx.critical.has(s.span_id);
    const dur = ctx.durNs(s);
    const self = ctx.selfNs.get(s.span_id);
    return {
      id: s.span_id, width: W, height: H,
      cls: `span kind-${s.kind || 'INTERNAL'} status-${code}${crit ? ' critical' : ''}${isFailure(code) ? ' failed' : ''}`,
      label: `${s.operation} (${s.service}, ${s.kind}), ${fmtDuration(dur)}, status ${code}${crit ? ', on the critical path' : ''}`,
      draw(g) {
        g.append(svg('rect', { class: 'box', width: W, height: H, rx: 6 }),
          svg('rect', { class: 'kind-bar', width: 6, height: H, rx: 3 }),
          svg('text', { x: 12, y: 18, class: 'n-op', text: clip(s.operation, 27) }),
          svg('text', { x: 12, y: 34, class: 'n-svc', text: clip(`${s.service} · ${(s.kind || '').toLowerCase()}`, 32) }),
          svg('text', { x: 12, y: 50, class: 'n-dur', text: `${fmtDuration(dur)}${self !== undefined ? ` · self ${fmtDuration(self)}` : ''}` }),
          svg('title', { text: `${s.service}: ${s.operation}\n${s.kind} · ${code}${statusMessage(s) ? `: ${statusMessage(s)}` : ''}` }));
        if (isFailure(code)) {
          g.append(svg('text', { x: W - 8, y: 50, class: 'n-badge', 'text-anchor': 'end', text: code === 'TIMEOUT' ? '⏱ TIMEOUT' : '✕ ERROR' }));
        } else if (code === 'CANCELLED') {
          g.append(svg('text', { x: W - 8, y: 50, class: 'n-badge cancelled', 'text-anchor': 'end', text: 'CANCELLED' }));
        }
      },
    };
  });
  const edges = dag.edges.filter((e) => ctx.byId.has(e.from) && ctx.byId.has(e.to)).map((e) => {
    const crit = ctx.criticalEdges.has(`${e.from}>${e.to}`);
    return {
      from: e.from, to: e.to, type: e.type,
      cls: `e-${e.type}${crit ? ' critical' : ''}`,
      marker: crit ? 'arrow-critical' : EDGE_MARKERS[e.type] || 'arrow',
      title: `${EDGE_TITLES[e.type] || e.type}: ${ctx.byId.get(e.from).operation} → ${ctx.byId.get(e.to).operation}`,
    };
  });
  // Spans of other traces this trace links to (a job continuing another job's trace, or
  // reading its output): one small node each, upstream of the linking span; selecting one
  // opens that trace.
  const external = new Map();
  for (const l of dag.cross_trace_links || []) {
    if (!ctx.byId.has(l.span_id)) continue;
    const id = `ext:${l.target_trace_id}:${l.target_span_id}`;
    external.set(id, l);
    edges.push({
      from: id, to: l.span_id, type: l.type, cls: `e-${l.type} cross`, marker: EDGE_MARKERS[l.type] || 'arrow',
      title: `${EDGE_TITLES[l.type] || l.type} from trace ${l.target_trace_id}`,
    });
  }
  const EW = 180;
  const EH = 42;
  for (const [id, l] of external) {
    nodes.push({
      id, width: EW, height: EH, cls: 'external',
      label: `Span ${l.target_span_id} of trace ${l.target_trace_id} (${l.type} link); opens that trace`,
      draw(g) {
        g.append(svg('rect', { class: 'box', width: EW, height: EH, rx: 6 }),
          svg('text', { x: 10, y: 17, class: 'n-svc', text: `↗ other trace · ${l.type.toLowerCase()}` }),
          svg('text', { x: 10, y: 33, class: 'n-dur mono', text: `…${l.target_trace_id.slice(-12)} / ${l.target_span_id.slice(-6)}` }));
      },
    });
  }
  const open = (id) => {
    const l = external.get(id);
    if (l) location.assign(traceHref(l.target_trace_id, `?span=${encodeURIComponent(l.target_span_id)}`));
    else onSelect(id);
  };
  return drawGraph({ nodes, edges, onSelect: open, ariaLabel: `DAG of ${dag.spans.length} spans` });
}

/** The DAG folded into one node per service or per step kind, with edge counts. */
function drawGroupedDag(ctx, groupBy, onSelect) {
  const { dag } = ctx;
  const keyOf = (s) => (groupBy === 'service' ? s.service : s.kind || 'INTERNAL');
  const groups = new Map();
  for (const s of dag.spans) {
    const k = keyOf(s);
    const grp = groups.get(k) || { spans: 0, errors: 0, critical: 0, busyNs: 0, kinds: new Set() };
    grp.spans += 1;
    grp.errors += isFailure(statusCode(s)) ? 1 : 0;
    grp.critical += ctx.critical.has(s.span_id) ? 1 : 0;
    grp.busyNs += ctx.selfNs.get(s.span_id) || 0;
    grp.kinds.add(s.kind || 'INTERNAL');
    groups.set(k, grp);
  }
  const pairs = new Map();
  for (const e of dag.edges) {
    const a = ctx.byId.get(e.from);
    const b = ctx.byId.get(e.to);
    if (!a || !b || keyOf(a) === keyOf(b)) continue;
    const key = `${keyOf(a)}\u0000${keyOf(b)}\u0000${e.type}`;
    pairs.set(key, (pairs.get(key) || 0) + 1);
  }
  const W = 220;
  const H = 58;
  const nodes = [...groups].map(([k, grp]) => {
    const kind = groupBy === 'kind' ? k : grp.kinds.size === 1 ? [...grp.kinds][0] : 'INTERNAL';
    return {
      id: k, width: W, height: H,
      cls: `group kind-${kind}${grp.errors ? ' failed' : ''}${grp.critical ? ' critical' : ''}`,
      label: `${k}: ${grp.spans} spans, ${grp.errors} failed`,
      draw(g) {
        g.append(svg('rect', { class: 'box', width: W, height: H, rx: 6 }),
          svg('rect', { class: 'kind-bar', width: 6, height: H, rx: 3 }),
          svg('text', { x: 12, y: 18, class: 'n-op', text: clip(groupBy === 'kind' ? k.toLowerCase() : k, 28) }),
          svg('text', { x: 12, y: 34, class: 'n-svc', text: `${grp.spans} spans${grp.critical ? ` · ${grp.critical} on critical path` : ''}` }),
          svg('text', { x: 12, y: 50, class: 'n-dur', text: `self ${fmtDuration(grp.busyNs)}${grp.errors ? ` · ${grp.errors} failed` : ''}` }));
      },
    };
  });
  const edges = [...pairs].map(([key, n]) => {
    const [from, to, type] = key.split('\u0000');
    return { from, to, type, cls: `e-${type}`, marker: EDGE_MARKERS[type] || 'arrow', label: `${n}×`, title: `${n} ${EDGE_TITLES[type] || type} edge(s)` };
  });
  return drawGraph({ nodes, edges, onSelect, ranksep: 90, ariaLabel: `DAG of ${dag.spans.length} spans grouped by ${groupBy === 'service' ? 'service' : 'step kind'}` });
}

function attrValue(v) {
  return typeof v === 'string' ? v : JSON.stringify(v);
}

function attrTable(attrs, caption) {
  const entries = Object.entries(attrs || {});
  if (!entries.length) return el('p', { class: 'muted', text: `No ${caption.toLowerCase()}.` });
  return el('table', { class: 'kv' }, el('caption', { text: caption }),
    el('tbody', {}, entries.map(([k, v]) => el('tr', {}, el('th', { scope: 'row', text: k }), el('td', { text: attrValue(v) })))));
}

function spanDetail(s, ctx, traceId) {
  const code = statusCode(s);
  const msg = statusMessage(s);
  const out = [
    el('h2', { text: s.operation }),
    el('dl', { class: 'facts small' },
      fact('Service', s.service), fact('Step kind', s.kind),
      fact('Status', el('span', { class: `status status-${code}`, text: code })),
      fact('Span id', el('code', { text: s.span_id })),
      fact('Parent', s.parent_id ? el('code', { text: s.parent_id }) : 'none (root)'),
      fact('Start', fmtTime(ctx.startUs.get(s.span_id))),
      fact('Duration', fmtDuration(ctx.durNs(s))),
      fact('Self time', fmtDuration(ctx.selfNs.get(s.span_id))),
      fact('Critical path', ctx.critical.has(s.span_id) ? 'yes' : 'no')),
  ];
  if (msg) out.push(el('p', { class: `status-message status-${code}` }, el('strong', { text: 'Status message: ' }), msg));
  out.push(attrTable(s.attributes, 'Attributes'));
  const events = s.events || [];
  out.push(el('h3', { text: `Events (${events.length})` }));
  if (events.length) {
    out.push(el('ol', { class: 'events' }, events.map((e) => el('li', {},
      el('span', { class: 'muted', text: `+${fmtDuration((parseTs(e.time) - ctx.startUs.get(s.span_id)) * 1000)} ` }),
      el('strong', { text: e.name }),
      Object.keys(e.attributes || {}).length ? attrTable(e.attributes, 'Event attributes') : null))));
  }
  const links = s.links || [];
  out.push(el('h3', { text: `Links (${links.length})` }));
  if (links.length) {
    out.push(el('ul', { class: 'links' }, links.map((l) => {
      const other = l.trace_id !== traceId;
      const target = other
        ? el('a', { href: traceHref(l.trace_id, `?span=${encodeURIComponent(l.span_id)}`), class: 'trace-link' }, `trace ${l.trace_id} span ${l.span_id}`)
        : el('span', {}, `span ${l.span_id}${ctx.byId.has(l.span_id) ? ` (${ctx.byId.get(l.span_id).operation})` : ' (not stored)'}`);
      return el('li', {}, el('span', { class: `link-type lt-${l.type}`, text: l.type }), ' → ', target);
    })));
  }
  return out;
}

function groupDetail(key, groupBy, ctx, select) {
  const spans = ctx.dag.spans.filter((s) => (groupBy === 'service' ? s.service : s.kind || 'INTERNAL') === key);
  spans.sort((a, b) => ctx.durNs(b) - ctx.durNs(a));
  const shown = spans.slice(0, 200);
  return [
    el('h2', { text: key }),
    el('p', { text: `${spans.length} spans grouped by ${groupBy === 'service' ? 'service' : 'step kind'}, longest first${spans.length > shown.length ? ` (first ${shown.length})` : ''}. Pick one to see it in the timeline.` }),
    el('ul', { class: 'group-spans' }, shown.map((s) => el('li', {},
      el('button', { type: 'button', class: 'linkish', onclick: () => select(s.span_id, 'group') }, s.operation),
      ` ${fmtDuration(ctx.durNs(s))} `, el('span', { class: `status status-${statusCode(s)}`, text: statusCode(s) })))),
  ];
}

/** Upstream traces (this trace's links) and downstream ones (lineage), one click away. */
function acrossTraces(dag) {
  const up = new Map();
  for (const l of dag.cross_trace_links || []) {
    const t = up.get(l.target_trace_id) || new Set();
    t.add(l.type);
    up.set(l.target_trace_id, t);
  }
  const upList = el('ul', { id: 'upstream' }, [...up].map(([tid, types]) => el('li', {},
    el('a', { href: traceHref(tid), class: 'trace-link' }, tid), ' ', [...types].map((t) => el('span', { class: `link-type lt-${t}`, text: t })))));
  const downList = el('ul', { id: 'downstream' }, el('li', { class: 'muted', text: 'Loading…' }));
  getLineage(dag.trace_id, 'downstream', 1).then((lin) => {
    const types = new Map();
    for (const e of lin.edges) if (e.to_trace === dag.trace_id) {
      const t = types.get(e.from_trace) || new Set();
      t.add(e.type);
      types.set(e.from_trace, t);
    }
    const nodes = lin.nodes.filter((n) => n.depth === 1);
    downList.replaceChildren(...(nodes.length ? nodes.map((n) => el('li', {},
      el('a', { href: traceHref(n.trace_id), class: 'trace-link' }, n.trace_id),
      n.summary ? ` ${n.summary.root_service}: ${n.summary.root_operation} ` : ' (not stored) ',
      [...(types.get(n.trace_id) || [])].map((t) => el('span', { class: `link-type lt-${t}`, text: t })))) : [el('li', { class: 'muted', text: 'No trace links to this one.' })]));
  }).catch((e) => downList.replaceChildren(el('li', {}, errorBox(e, 'Could not load downstream traces:'))));
  if (!up.size) upList.append(el('li', { class: 'muted', text: 'This trace links to no other trace.' }));
  return el('section', { class: 'across', 'aria-label': 'Linked traces' },
    el('div', {}, el('h2', { text: 'Upstream traces' }), upList),
    el('div', {}, el('h2', { text: 'Downstream traces' }), downList),
    el('div', {}, el('h2', { text: 'Lineage' }),
      el('p', {}, el('a', { href: `/ui/lineage/${encodeURIComponent(dag.trace_id)}`, id: 'lineage-link' }, 'Connected traces to a chosen depth'))));
}
