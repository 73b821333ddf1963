// The lineage page: the traces connected to one trace through FOLLOWS_FROM and
// DATA_DEPENDENCY links, upstream, downstream or both, to a chosen depth, drawn as a layered
// graph (edges name the datasets their links carry); a trace opens on click. The datasets
// of the graph are listed with their producers and consumers, and the walk can follow one
// dataset only.
import { getLineage } from './api.js';
import { clip, drawGraph } from './dag.js';
import { el, errorBox, fmtDuration, messageBox, svg, traceHref } from './util.js';

export async function renderLineage(main, id, params) {
  const direction = ['upstream', 'downstream', 'both'].includes(params.get('direction')) ? params.get('direction') : 'both';
  const depth = params.get('depth') || '3';
  const dataset = params.get('dataset') || '';
  const form = el('form', { class: 'inline-form', method: 'get', action: `/ui/lineage/${encodeURIComponent(id)}` },
    el('label', { class: 'field' }, el('span', { text: 'Direction' }),
      el('select', { name: 'direction', id: 'f-direction' }, ['both', 'upstream', 'downstream'].map((d) => el('option', { value: d, selected: d === direction }, d)))),
    el('label', { class: 'field' }, el('span', { text: 'Depth (link hops)' }),
      el('input', { name: 'depth', id: 'f-depth', type: 'number', min: 1, max: 10, value: depth })),
    el('label', { class: 'field' }, el('span', { text: 'Only dataset' }),
      el('input', { name: 'dataset', id: 'f-dataset', value: dataset, placeholder: 'any', autocomplete: 'off', size: 22 })),
    el('button', { type: 'submit', class: 'primary' }, 'Show'));
  const body = el('section', { id: 'lineage', 'aria-live': 'polite' }, messageBox('Loading lineage…', 'loading'));
  main.replaceChildren(el('h1', {}, 'Lineage of ', el('a', { href: traceHref(id) }, el('code', { text: id }))), form, body);
  let lin;
  try {
    lin = await getLineage(id, direction, depth, dataset);
  } catch (e) {
    body.replaceChildren(errorBox(e, e.status === 404 ? 'Trace not found:' : 'Could not load the lineage:'));
    main.dataset.ready = 'lineage';
    return;
  }
  const pairs = new Map();
  for (const e of lin.edges) {
    // Drawn upstream → downstream: the linked trace first.
    const key = `${e.to_trace}>${e.from_trace}`;
    const p = pairs.get(key) || { from: e.to_trace, to: e.from_trace, types: new Map(), datasets: new Set() };
    p.types.set(e.type, (p.types.get(e.type) || 0) + 1);
    if (e.dataset) p.datasets.add(e.dataset);
    pairs.set(key, p);
  }
  const W = 250;
  const H = 58;
  const nodes = lin.nodes.map((n) => ({
    id: n.trace_id, width: W, height: H,
    cls: `trace-node${n.trace_id === lin.root ? ' root' : ''}${n.summary?.error_count ? ' failed' : ''}${n.stored ? '' : ' missing'}`,
    label: n.summary ? `${n.summary.root_service}: ${n.summary.root_operation}, depth ${n.depth}` : `trace ${n.trace_id}, not stored`,
    draw(g) {
      g.append(svg('rect', { class: 'box', width: W, height: H, rx: 6 }),
        svg('text', { x: 10, y: 18, class: 'n-op', text: n.summary ? clip(`${n.summary.root_service}: ${n.summary.root_operation}`, 34) : 'not stored' }),
        svg('text', { x: 10, y: 34, class: 'n-svc mono', text: n.trace_id }),
        svg('text', { x: 10, y: 50, class: 'n-dur', text: n.summary ? `${fmtDuration(n.summary.duration_nanos)} · ${n.summary.span_count} spans · ${n.summary.error_count} errors · depth ${n.depth}` : `depth ${n.depth}` }));
    },
  }));
  const edges = [...pairs.values()].map((p) => {
    const types = [...p.types].map(([t, n]) => `${t}${n > 1 ? ` ×${n}` : ''}`).join(', ');
    const names = [...p.datasets].sort();
    const label = names.length ? `${types}: ${clip(names.join(', '), 40)}` : types;
    const dd = p.types.has('DATA_DEPENDENCY');
    return { from: p.from, to: p.to, cls: dd ? 'e-DATA_DEPENDENCY' : 'e-FOLLOWS_FROM', marker: dd ? 'arrow-data' : 'arrow-follows', label, title: names.length ? `${types}: ${names.join(', ')}` : types };
  });
  const here = (d) => {
    const q = new URLSearchParams({ direction, depth });
    if (d) q.set('dataset', d);
    return `/ui/lineage/${encodeURIComponent(id)}?${q}`;
  };
  const datasets = lin.datasets.length ? el('table', { class: 'results', id: 'lineage-datasets' },
    el('caption', { text: 'Datasets the links carry' }),
    el('thead', {}, el('tr', {}, ['Dataset', 'Written by (traces)', 'Read by (traces)', 'Links'].map((h) => el('th', { scope: 'col', text: h })))),
    el('tbody', {}, lin.datasets.map((d) => el('tr', { 'data-dataset': d.name },
      el('td', {}, el('a', { href: here(d.name), class: 'mono', title: 'Follow only this dataset' }, d.name)),
      el('td', { class: 'num', text: String(d.producers.length) }),
      el('td', { class: 'num', text: String(d.consumers.length) }),
      el('td', { class: 'num', text: String(d.edges) }))))) : null;
  const view = drawGraph({ nodes, edges, ranksep: 110, ariaLabel: `Lineage of ${lin.nodes.length} traces`, onSelect: (tid) => location.assign(traceHref(tid)) });
  body.replaceChildren(...[
    el('p', { class: 'muted', text: `${lin.nodes.length} trace(s), ${lin.edges.length} link(s), ${lin.direction}, depth ${lin.depth}${lin.dataset ? `, dataset ${lin.dataset} only` : ''}. Arrows point downstream. Select a trace to open it.` }),
    lin.dataset ? el('p', {}, el('a', { href: here(''), id: 'all-datasets' }, 'Show every link')) : null,
    lin.truncated ? messageBox(`There is more lineage than shown (bounded at depth ${lin.depth} and ${lin.max_nodes} traces).`, 'warn') : null,
    view.element, datasets].filter(Boolean));
  view.fit();
  main.dataset.ready = 'lineage';
}
