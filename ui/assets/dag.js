// Layered graph drawing shared by the trace DAG, the lineage view and the pipeline map:
// dagre computes the layout (left to right by dependency), this module draws it as SVG and
// adds pan and zoom (mouse wheel, drag, the +/−/fit buttons, or the keyboard: arrows pan,
// + and − zoom, 0 fits) and keyboard-focusable nodes (Enter or Space selects).
import dagre from './vendor/dagre.esm.js';
import { el, svg } from './util.js';

const ARROWS = ['arrow', 'arrow-data', 'arrow-follows', 'arrow-critical', 'arrow-error'];

/**
 * Lays out and draws a graph.
 * nodes: [{id, width, height, cls, label (aria), draw(g, w, h)}]
 * edges: [{from, to, cls, marker, title, label}]  (label: text drawn at the edge's middle)
 * Returns {element, fit, focusNode(id), nodeElement(id), layoutMs}.
 */
export function drawGraph({ nodes, edges, ariaLabel, onSelect, ranksep = 70, nodesep = 16 }) {
  const t0 = performance.now();
  const g = new dagre.graphlib.Graph({ multigraph: true });
  g.setGraph({ rankdir: 'LR', ranksep, nodesep, edgesep: 8, marginx: 24, marginy: 24 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const n of nodes) g.setNode(n.id, { width: n.width, height: n.height });
  edges.forEach((e, i) => {
    const label = e.label ? { width: e.label.length * 6.5 + 8, height: 16, labelpos: 'c' } : {};
    g.setEdge(e.from, e.to, label, `e${i}`);
  });
  dagre.layout(g);
  const layoutMs = performance.now() - t0;

  const viewport = svg('g', { class: 'viewport' });
  const edgeLayer = svg('g', { class: 'edges' });
  const labelLayer = svg('g', { class: 'edge-labels' });
  const nodeLayer = svg('g', { class: 'nodes' });
  viewport.append(edgeLayer, labelLayer, nodeLayer);

  edges.forEach((e, i) => {
    const laid = g.edge({ v: e.from, w: e.to, name: `e${i}` });
    if (!laid) return;
    const d = laid.points.map((p, j) => `${j ? 'L' : 'M'}${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(' ');
    const path = svg('path', {
      d, class: `edge ${e.cls || ''}`, 'marker-end': `url(#${e.marker || 'arrow'})`,
      'data-from': e.from, 'data-to': e.to, 'data-type': e.type || '',
    }, e.title ? svg('title', { text: e.title }) : null);
    edgeLayer.append(path);
    if (e.label && Number.isFinite(laid.x)) {
      labelLayer.append(svg('text', { x: laid.x, y: laid.y + 4, class: `edge-label ${e.cls || ''}`, 'text-anchor': 'middle', text: e.label }));
    }
  });

  const byId = new Map();
  for (const n of nodes) {
    const p = g.node(n.id);
    const node = svg('g', {
      class: `node ${n.cls || ''}`, transform: `translate(${(p.x - n.width / 2).toFixed(1)},${(p.y - n.height / 2).toFixed(1)})`,
      tabindex: 0, role: 'button', 'aria-label': n.label, 'data-id': n.id,
    });
    n.draw(node, n.width, n.height);
    if (onSelect) {
      node.addEventListener('click', () => onSelect(n.id));
      node.addEventListener('keydown', (ev) => {
        if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); onSelect(n.id); }
      });
    }
    byId.set(n.id, node);
    nodeLayer.append(node);
  }

  const defs = svg('defs', {}, ARROWS.map((id) => svg('marker', {
    id, viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse', class: id,
  }, svg('path', { d: 'M0,0 L10,5 L0,10 z' }))));
  const root = svg('svg', { class: 'graph', role: 'img', 'aria-label': ariaLabel }, defs, viewport);

  const graphW = g.graph().width || 1;
  const graphH = g.graph().height || 1;
  const view = { x: 0, y: 0, k: 1 };
  const apply = () => viewport.setAttribute('transform', `translate(${view.x.toFixed(1)},${view.y.toFixed(1)}) scale(${view.k.toFixed(4)})`);
  const zoomAt = (factor, cx, cy) => {
    const k = Math.min(4, Math.max(0.02, view.k * factor));
    view.x = cx - (cx - view.x) * (k / view.k);
    view.y = cy - (cy - view.y) * (k / view.k);
    view.k = k;
    apply();
  };
  const size = () => ({ w: root.clientWidth || 800, h: root.clientHeight || 480 });
  const fit = () => {
    const { w, h } = size();
    view.k = Math.min(1.2, Math.max(0.02, Math.min(w / graphW, h / graphH)));
    view.x = (w - graphW * view.k) / 2;
    view.y = (h - graphH * view.k) / 2;
    apply();
  };

  root.addEventListener('wheel', (ev) => {
    ev.preventDefault();
    const r = root.getBoundingClientRect();
    zoomAt(Math.exp(-ev.deltaY * 0.0015), ev.clientX - r.left, ev.clientY - r.top);
  }, { passive: false });
  let drag = null;
  root.addEventListener('pointerdown', (ev) => {
    if (ev.button !== 0 || ev.target.closest('.node')) return;
    drag = { x: ev.clientX, y: ev.clientY, vx: view.x, vy: view.y };
    root.setPointerCapture(ev.pointerId);
    root.classList.add('dragging');
  });
  root.addEventListener('pointermove', (ev) => {
    if (!drag) return;
    view.x = drag.vx + ev.clientX - drag.x;
    view.y = drag.vy + ev.clientY - drag.y;
    apply();
  });
  const stop = () => { drag = null; root.classList.remove('dragging'); };
  root.addEventListener('pointerup', stop);
  root.addEventListener('pointercancel', stop);

  const frame = el('div', { class: 'graph-frame', tabindex: 0, 'aria-label': `${ariaLabel}. Arrow keys pan, + and − zoom, 0 fits.` }, root);
  frame.addEventListener('keydown', (ev) => {
    if (ev.target !== frame) return;
    const { w, h } = size();
    const step = 60;
    const moves = { ArrowLeft: [step, 0], ArrowRight: [-step, 0], ArrowUp: [0, step], ArrowDown: [0, -step] };
    if (moves[ev.key]) { view.x += moves[ev.key][0]; view.y += moves[ev.key][1]; apply(); }
    else if (ev.key === '+' || ev.key === '=') zoomAt(1.25, w / 2, h / 2);
    else if (ev.key === '-') zoomAt(0.8, w / 2, h / 2);
    else if (ev.key === '0') fit();
    else return;
    ev.preventDefault();
  });
  const tools = el('div', { class: 'graph-tools' },
    el('button', { type: 'button', title: 'Zoom in', 'aria-label': 'Zoom in', onclick: () => { const { w, h } = size(); zoomAt(1.25, w / 2, h / 2); } }, '+'),
    el('button', { type: 'button', title: 'Zoom out', 'aria-label': 'Zoom out', onclick: () => { const { w, h } = size(); zoomAt(0.8, w / 2, h / 2); } }, '−'),
    el('button', { type: 'button', title: 'Fit to view', 'aria-label': 'Fit to view', onclick: fit }, 'Fit'));
  const element = el('div', { class: 'graph-wrap' }, frame, tools);

  const focusNode = (id) => {
    const p = g.node(id);
    if (!p) return;
    const { w, h } = size();
    const k = Math.max(view.k, 0.6);
    view.k = k;
    view.x = w / 2 - p.x * k;
    view.y = h / 2 - p.y * k;
    apply();
  };
  apply();
  return { element, fit, focusNode, nodeElement: (id) => byId.get(id), layoutMs };
}

/** Text cut to a width in characters, with an ellipsis. */
export const clip = (s, n) => (s.length > n ? `${s.slice(0, n - 1)}…` : s);
