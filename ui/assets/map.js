// The pipeline map: services and the edges between them over a time window, with call
// counts and error rates, from GET /api/v1/dependencies; also as a table, and the datasets
// (pipeline conventions) with the services that wrote and read them.
import { getDependencies } from './api.js';
import { clip, drawGraph } from './dag.js';
import { el, errorBox, localToRfc3339, messageBox, PRESETS, rfc3339ToLocal, svg, windowFrom } from './util.js';

const pct = (r) => `${(r * 100).toFixed(r > 0 && r < 0.01 ? 2 : 0)}%`;

export async function renderMap(main, params) {
  if (!params.get('lookback') && !params.get('start') && !params.get('end')) params.set('lookback', '24h');
  const custom = !params.get('lookback');
  const windowSel = el('select', { name: 'lookback', id: 'f-lookback' },
    PRESETS.map(([k, t]) => el('option', { value: k, selected: k === params.get('lookback') }, t)),
    el('option', { value: '', selected: custom }, 'Absolute…'));
  const startIn = el('input', { name: 'start', id: 'f-start', type: 'datetime-local', step: 1, value: rfc3339ToLocal(params.get('start') || '') });
  const endIn = el('input', { name: 'end', id: 'f-end', type: 'datetime-local', step: 1, value: rfc3339ToLocal(params.get('end') || '') });
  const absolute = el('span', { class: 'absolute' }, el('label', { class: 'field' }, el('span', { text: 'From' }), startIn), el('label', { class: 'field' }, el('span', { text: 'To' }), endIn));
  absolute.hidden = !custom;
  windowSel.addEventListener('change', () => { absolute.hidden = windowSel.value !== ''; });
  const form = el('form', { class: 'inline-form' },
    el('label', { class: 'field' }, el('span', { text: 'Time window' }), windowSel), absolute,
    el('button', { type: 'submit', class: 'primary' }, 'Show'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    if (windowSel.value) q.set('lookback', windowSel.value);
    else {
      if (localToRfc3339(startIn.value)) q.set('start', localToRfc3339(startIn.value));
      if (localToRfc3339(endIn.value)) q.set('end', localToRfc3339(endIn.value));
    }
    location.assign(`/ui/map?${q}`);
  });
  const body = el('section', { id: 'map', 'aria-live': 'polite' }, messageBox('Computing the map…', 'loading'));
  main.replaceChildren(el('h1', { text: 'Pipeline map' }), form, body);
  const w = windowFrom(params);
  let deps;
  try {
    deps = await getDependencies(w.start, w.end);
  } catch (e) {
    body.replaceChildren(errorBox(e, 'Could not compute the map:'));
    main.dataset.ready = 'map';
    return;
  }
  if (!deps.services.length) {
    body.replaceChildren(messageBox('No spans in this time window. Pick a wider one.', 'empty'));
    main.dataset.ready = 'map';
    return;
  }
  const W = 170;
  const H = 46;
  const nodes = deps.services.map((s) => ({
    id: s.service, width: W, height: H, cls: `service-node${s.error_count ? ' failed' : ''}`,
    label: `${s.service}: ${s.span_count} spans, ${s.error_count} failed`,
    draw(g) {
      g.append(svg('rect', { class: 'box', width: W, height: H, rx: 6 }),
        svg('text', { x: 10, y: 20, class: 'n-op', text: clip(s.service, 24) }),
        svg('text', { x: 10, y: 38, class: 'n-dur', text: `${s.span_count} spans · ${s.error_count} failed` }));
    },
  }));
  const edges = deps.edges.filter((e) => e.parent !== e.child).map((e) => {
    const kind = e.data_dependency ? 'e-DATA_DEPENDENCY' : e.follows_from && !e.child_of ? 'e-FOLLOWS_FROM' : 'e-PARENT_CHILD';
    return {
      from: e.parent, to: e.child, cls: `${kind}${e.error_count ? ' erroring' : ''}`, marker: e.error_count ? 'arrow-error' : 'arrow',
      label: `${e.call_count} calls${e.error_count ? ` · ${pct(e.error_rate)} err` : ''}`,
      title: `${e.parent} → ${e.child}: ${e.call_count} calls (${e.child_of} parent/child, ${e.follows_from} FOLLOWS_FROM, ${e.data_dependency} DATA_DEPENDENCY), ${e.error_count} failed${e.datasets.length ? `; datasets: ${e.datasets.join(', ')}` : ''}`,
    };
  });
  const view = drawGraph({ nodes, edges, ranksep: 110, nodesep: 24, ariaLabel: `Pipeline map of ${deps.services.length} services` });
  const rows = deps.edges.map((e) => el('tr', { class: e.error_count ? 'failed' : '' },
    el('td', { text: e.parent }), el('td', { text: e.child }), el('td', { class: 'num', text: String(e.call_count) }),
    el('td', { class: 'num', text: String(e.child_of) }), el('td', { class: 'num', text: String(e.follows_from) }),
    el('td', { class: 'num', text: String(e.data_dependency) }), el('td', { class: 'num', text: String(e.error_count) }),
    el('td', { class: `num${e.error_count ? ' bad' : ''}`, text: pct(e.error_rate) }),
    el('td', { class: 'datasets', text: e.datasets.join(', ') })));
  // Datasets, where spans name them (pipeline conventions): who wrote and who read each.
  const datasetRows = deps.datasets.map((d) => el('tr', {},
    el('td', { text: d.dataset }), el('td', { text: d.producers.join(', ') }), el('td', { text: d.consumers.join(', ') }),
    el('td', { class: 'num', text: String(d.write_count) }), el('td', { class: 'num', text: String(d.read_count) })));
  body.replaceChildren(...[
    el('p', { class: 'muted', text: `${deps.services.length} services, ${deps.edges.length} edges from ${deps.traces_read} traces (${deps.spans_read} spans).` }),
    deps.truncated ? messageBox(`Computed from part of the window only (at most ${deps.max_traces} traces, newest first).`, 'warn') : null,
    view.element,
    el('table', { class: 'results', id: 'edge-table' }, el('caption', { text: 'Edges' }),
      el('thead', {}, el('tr', {}, ['From', 'To', 'Calls', 'Parent/child', 'FOLLOWS_FROM', 'DATA_DEPENDENCY', 'Failed', 'Error rate', 'Datasets'].map((h) => el('th', { scope: 'col', text: h })))),
      el('tbody', {}, rows)),
    datasetRows.length ? el('table', { class: 'results', id: 'dataset-table' }, el('caption', { text: 'Datasets' }),
      el('thead', {}, el('tr', {}, ['Dataset', 'Written by', 'Read by', 'Writes', 'Reads'].map((h) => el('th', { scope: 'col', text: h })))),
      el('tbody', {}, datasetRows)) : null].filter(Boolean));
  view.fit();
  main.dataset.ready = 'map';
}
