// The timeline (Gantt) view of a trace: one row per span in parent/child tree order, a bar
// at the span's offset from the trace start, the self time and status on the row. Rows are
// buttons; the selection is shared with the DAG view.
import { el, fmtDuration, isFailure, statusCode } from './util.js';

export function drawTimeline(ctx, onSelect) {
  const { dag } = ctx;
  const children = new Map();
  for (const e of dag.edges) {
    if (e.type !== 'PARENT_CHILD') continue;
    if (!children.has(e.from)) children.set(e.from, []);
    children.get(e.from).push(e.to);
  }
  const byStart = (a, b) => ctx.startUs.get(a) - ctx.startUs.get(b) || (a < b ? -1 : 1);
  for (const list of children.values()) list.sort(byStart);
  // Roots first, then anything a parent cycle left unreached, each subtree in start order.
  const order = [];
  const seen = new Set();
  const visit = (id, depth) => {
    const stack = [[id, depth]];
    while (stack.length) {
      const [sid, d] = stack.pop();
      if (seen.has(sid)) continue;
      seen.add(sid);
      order.push([sid, d]);
      const kids = children.get(sid) || [];
      for (let i = kids.length - 1; i >= 0; i--) stack.push([kids[i], d + 1]);
    }
  };
  const starts = [...dag.spans.map((s) => s.span_id)].sort(byStart);
  for (const r of [...(dag.roots || []), ...(dag.orphans || [])].sort(byStart)) visit(r, 0);
  for (const sid of starts) visit(sid, 0);

  let t0 = Infinity;
  let t1 = -Infinity;
  for (const s of dag.spans) {
    t0 = Math.min(t0, ctx.startUs.get(s.span_id));
    t1 = Math.max(t1, ctx.endUs.get(s.span_id));
  }
  const total = Math.max(t1 - t0, 1);
  const ticks = el('div', { class: 'tl-ticks', 'aria-hidden': 'true' });
  for (let i = 0; i <= 4; i++) {
    const t = el('span', { class: 'tl-tick', text: fmtDuration((total * i) / 4 * 1000) });
    t.style.left = `${i * 25}%`;
    ticks.append(t);
  }
  const rows = new Map();
  const list = el('div', { class: 'tl-rows', role: 'listbox', 'aria-label': `Timeline of ${dag.spans.length} spans` });
  for (const [sid, depth] of order) {
    const s = ctx.byId.get(sid);
    const code = statusCode(s);
    const startPct = ((ctx.startUs.get(sid) - t0) / total) * 100;
    const widthPct = Math.max(((ctx.endUs.get(sid) - ctx.startUs.get(sid)) / total) * 100, 0.2);
    const bar = el('span', { class: `tl-bar kind-${s.kind || 'INTERNAL'}${ctx.critical.has(sid) ? ' critical' : ''}${isFailure(code) ? ' failed' : ''}` });
    bar.style.left = `${startPct}%`;
    bar.style.width = `${widthPct}%`;
    const label = el('span', { class: 'tl-label' }, el('span', { class: 'tl-svc', text: s.service }), ' ', s.operation);
    label.style.paddingLeft = `${Math.min(depth, 12) * 12 + 4}px`;
    const row = el('div', {
      class: `tl-row${isFailure(code) ? ' failed' : ''}`, role: 'option', tabindex: -1, 'aria-selected': 'false', 'data-span-id': sid,
      'aria-label': `${s.operation} (${s.service}), ${fmtDuration(ctx.durNs(s))}, ${code}`,
    }, label, el('span', { class: 'tl-track' }, bar),
    el('span', { class: 'tl-dur', text: fmtDuration(ctx.durNs(s)) }));
    row.addEventListener('click', () => onSelect(sid));
    rows.set(sid, row);
    list.append(row);
  }
  // One tab stop for the list; arrows move, Enter selects (the focused row follows).
  let focused = order.length ? order[0][0] : null;
  if (focused) rows.get(focused).tabIndex = 0;
  const move = (sid) => {
    if (!sid) return;
    rows.get(focused).tabIndex = -1;
    focused = sid;
    const r = rows.get(sid);
    r.tabIndex = 0;
    r.focus();
  };
  list.addEventListener('keydown', (ev) => {
    const r = rows.get(focused);
    if (!r) return;
    if (ev.key === 'ArrowDown') move(r.nextElementSibling?.dataset.spanId);
    else if (ev.key === 'ArrowUp') move(r.previousElementSibling?.dataset.spanId);
    else if (ev.key === 'Home') move(list.firstElementChild?.dataset.spanId);
    else if (ev.key === 'End') move(list.lastElementChild?.dataset.spanId);
    else if (ev.key === 'Enter' || ev.key === ' ') onSelect(focused);
    else return;
    ev.preventDefault();
  });
  const element = el('div', { class: 'timeline' },
    el('div', { class: 'tl-head' }, el('span', { class: 'tl-label', text: 'Span' }), ticks, el('span', { class: 'tl-dur', text: 'Duration' })),
    list);
  return {
    element,
    select(sid, scroll) {
      for (const r of list.querySelectorAll('.tl-row.selected')) { r.classList.remove('selected'); r.setAttribute('aria-selected', 'false'); }
      const r = rows.get(sid);
      if (!r) return;
      r.classList.add('selected');
      r.setAttribute('aria-selected', 'true');
      rows.get(focused).tabIndex = -1;
      focused = sid;
      r.tabIndex = 0;
      if (scroll && r.offsetParent) r.scrollIntoView({ block: 'nearest' });
    },
  };
}
