// The single page's router: the path picks the page (search, trace, lineage, pipeline map),
// the query string is the page's state. Any failure becomes a message, never a blank page.
import { renderLineage } from './lineage.js';
import { renderMap } from './map.js';
import { renderSearch } from './search.js';
import { renderTrace } from './trace.js';
import { el, errorBox, traceHref } from './util.js';

async function route() {
  const main = document.getElementById('main');
  const params = new URLSearchParams(location.search);
  const path = location.pathname.replace(/\/+$/, '') || '/';
  let m;
  let page = 'search';
  try {
    if (path === '/' || path === '/ui' || path === '/ui/search') {
      await renderSearch(main, params);
    } else if ((m = /^\/ui\/trace\/([^/]+)$/.exec(path))) {
      page = 'trace';
      await renderTrace(main, decodeURIComponent(m[1]), params);
    } else if ((m = /^\/ui\/lineage\/([^/]+)$/.exec(path))) {
      page = 'lineage';
      await renderLineage(main, decodeURIComponent(m[1]), params);
    } else if (path === '/ui/map') {
      page = 'map';
      await renderMap(main, params);
    } else {
      page = '';
      main.replaceChildren(el('h1', { text: 'Page not found' }),
        el('div', { class: 'message error not-found', role: 'alert' }, `There is no page at ${location.pathname}.`),
        el('p', {}, el('a', { href: '/ui/search' }, 'Search traces')));
      main.dataset.ready = 'none';
    }
  } catch (e) {
    main.replaceChildren(el('h1', { text: 'Something went wrong' }), errorBox(e, 'The page failed:'));
    main.dataset.ready = 'error';
  }
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === page) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
}

document.getElementById('goto').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const id = new FormData(ev.target).get('id');
  if (String(id).trim()) location.assign(traceHref(String(id).trim()));
});
window.addEventListener('error', (ev) => {
  document.getElementById('main').prepend(errorBox(ev.error || { message: ev.message }, 'The page failed:'));
});
route();
