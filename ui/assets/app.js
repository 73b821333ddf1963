// The single page's router: the path picks the page (search, trace, lineage, pipeline map),
// the query string is the page's state. Any failure becomes a message, never a blank page.
import { renderLineage } from './lineage.js';
import { renderMap } from './map.js';
import { renderSearch } from './search.js';
import { renderTrace } from './trace.js';
import { saveToken, savedToken } from './api.js';
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

// The query service wants a token (401) or a better one (403): ask for it above the page,
// which stays hidden until a token is given; then the page is drawn again with it.
function askForToken(failure) {
  const main = document.getElementById('main');
  let box = document.getElementById('auth');
  if (box) box.remove();
  const why = failure.status === 403
    ? 'The token is valid but may not read traces: it needs the query scope.'
    : savedToken()
      ? 'The query service did not accept the token.'
      : 'This query service needs a bearer token with the query scope.';
  const input = el('input', { id: 'auth-token', name: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false', required: true });
  box = el('section', { id: 'auth', class: 'auth', 'aria-labelledby': 'auth-title' },
    el('h1', { id: 'auth-title', text: 'A token is needed' }),
    el('div', { class: 'message error', role: 'alert' }, why, ' ', failure.message),
    el('form', {
      onsubmit: (ev) => {
        ev.preventDefault();
        saveToken(String(new FormData(ev.target).get('token') || '').trim());
        box.remove();
        main.hidden = false;
        showForget();
        route();
      },
    },
    el('label', { for: 'auth-token', text: 'Token' }), input,
    el('button', { type: 'submit', class: 'primary', text: 'Use token' }),
    el('p', { class: 'hint', text: 'Kept in this browser tab only, and sent to this query service only.' })));
  main.hidden = true;
  main.dataset.ready = 'token';
  main.before(box);
  input.focus();
}
window.addEventListener('datatracing-auth', (ev) => askForToken(ev.detail));

function showForget() {
  const nav = document.querySelector('header.top nav');
  let b = document.getElementById('forget-token');
  if (!savedToken()) {
    if (b) b.remove();
    return;
  }
  if (b) return;
  b = el('button', {
    id: 'forget-token', type: 'button', class: 'linkish',
    onclick: () => { saveToken(null); location.reload(); },
  }, 'Forget token');
  nav.append(b);
}

document.getElementById('goto').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const id = new FormData(ev.target).get('id');
  if (String(id).trim()) location.assign(traceHref(String(id).trim()));
});
window.addEventListener('error', (ev) => {
  document.getElementById('main').prepend(errorBox(ev.error || { message: ev.message }, 'The page failed:'));
});
showForget();
route();
