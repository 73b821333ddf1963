// Browser tests of the DAG explorer: Debian's chromium driven by Playwright against a
// running datatracing binary that e2e/tests/ui.rs started and loaded with traces.
//
//   node ui.mjs            run every scenario; prints one JSON report line, exits 1 on a failure
//   node ui.mjs --screenshots DIR   also writes the README's screenshots (1280x800 PNG) to DIR
//
// Inputs (environment): DATATRACING_UI_BASE (http://127.0.0.1:PORT), DATATRACING_UI_CASE
// (JSON: the trace ids and windows the scenarios use), DATATRACING_CHROMIUM (default
// /usr/bin/chromium), DATATRACING_UI_SCENARIOS (comma list to run only some).
// Every wait is on a selector or a condition with a timeout; there are no sleeps.
import { chromium } from 'playwright-core';

const base = process.env.DATATRACING_UI_BASE;
const c = JSON.parse(process.env.DATATRACING_UI_CASE || '{}');
const only = (process.env.DATATRACING_UI_SCENARIOS || '').split(',').filter(Boolean);
const shotsAt = process.argv.indexOf('--screenshots');
const shotsDir = shotsAt > 0 ? process.argv[shotsAt + 1] : null;
if (!base || !c.failing_join) {
  console.error('DATATRACING_UI_BASE and DATATRACING_UI_CASE must be set (e2e/tests/ui.rs sets them)');
  process.exit(2);
}
const origin = new URL(base).origin;
const WAIT = 30_000;

function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

const browser = await chromium.launch({
  executablePath: process.env.DATATRACING_CHROMIUM || '/usr/bin/chromium',
  // Root in CI containers has no user namespace sandbox.
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme: 'light' });
// Anything the pages request off this origin is a failure (the UI must work offline), and so
// is any script error or CSP violation the console reports.
const offOrigin = [];
const consoleErrors = [];
await context.route('**/*', (route) => {
  const u = route.request().url();
  if (u.startsWith('data:') || new URL(u).origin === origin) return route.continue();
  offOrigin.push(u);
  return route.abort();
});
context.on('page', (p) => {
  // The API's 400, 401, 403 and 404 answers that scenarios provoke on purpose are logged by chromium
  // as failed loads; the pages show them as messages, which the scenarios check.
  p.on('console', (m) => {
    if (m.type() === 'error' && !/Failed to load resource: the server responded with a status of 40[0134]/.test(m.text())) {
      consoleErrors.push(`${p.url()}: ${m.text()}`);
    }
  });
  p.on('pageerror', (e) => consoleErrors.push(`${p.url()}: ${e.message}`));
});

async function open(page, path, ready) {
  await page.goto(base + path);
  await page.waitForSelector(`main[data-ready="${ready}"]`, { timeout: WAIT });
  // A value the page failed to compute shows up as these words; the fixtures never hold them.
  const text = await page.innerText('main');
  check(!/\b(undefined|NaN|\[object Object\])\b|(^|\n)\s*null\s*(\n|$)/.test(text), `${path} shows a broken value: ${text.slice(0, 2000)}`);
}

const results = [];
const figures = {};
async function scenario(name, fn) {
  if (only.length && !only.includes(name)) return;
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  const t0 = Date.now();
  try {
    await fn(page);
    results.push({ name, ok: true, ms: Date.now() - t0 });
  } catch (e) {
    results.push({ name, ok: false, ms: Date.now() - t0, error: String(e && e.stack || e) });
  } finally {
    await page.close();
  }
}

// A person looks for failing joins with the form, finds the known one, and opens it from the
// scatter plot; the URL holds the query.
await scenario('search_finds_failing_join', async (page) => {
  await open(page, '/', 'search');
  // The operation list follows the chosen service.
  await page.waitForSelector('#f-service option[value="spark-etl"]', { state: 'attached' });
  await page.selectOption('#f-service', 'spark-etl');
  await page.waitForSelector('#f-operation option[value="join orders+customers"]', { state: 'attached' });
  await page.selectOption('#f-service', '');
  await page.selectOption('#f-window', '6h');
  await page.selectOption('#f-kind', 'JOIN');
  await page.selectOption('#f-status', 'ERROR');
  await page.fill('input[name="attr"]', 'dataset=orders');
  await Promise.all([page.waitForURL(/\/ui\/search\?/), page.click('#search-submit')]);
  await page.waitForSelector('main[data-ready="search"]');
  const url = new URL(page.url());
  check(url.searchParams.get('kind') === 'JOIN' && url.searchParams.get('status') === 'ERROR'
    && url.searchParams.get('attr') === 'dataset=orders' && url.searchParams.get('lookback') === '6h',
  `the URL does not hold the query: ${page.url()}`);
  const rows = await page.$$eval('#result-table tbody tr', (trs) => trs.map((t) => t.dataset.traceId));
  check(rows.includes(c.failing_join), `the failing join ${c.failing_join} is not among ${JSON.stringify(rows)}`);
  check(!rows.includes(c.fan_in), 'the healthy fan-in join matched status=ERROR');
  // The same query again from the URL alone (shared link), then click-through from the plot.
  await open(page, url.pathname + url.search, 'search');
  await page.waitForSelector(`#scatter a.point.failed[data-trace-id="${c.failing_join}"]`);
  await Promise.all([page.waitForURL(new RegExp(`/ui/trace/${c.failing_join}`)),
    page.click(`#scatter a.point[data-trace-id="${c.failing_join}"]`)]);
  await page.waitForSelector('main[data-ready="trace"]');
});

// Paging with the API's cursors: one trace per page, next then first.
await scenario('search_pages_with_cursors', async (page) => {
  await open(page, `/ui/search?limit=20&start=${encodeURIComponent(c.start)}&end=${encodeURIComponent(c.end)}`, 'search');
  const firstPage = await page.$$eval('#result-table tbody tr', (t) => t.map((r) => r.dataset.traceId));
  check(firstPage.length === 20, `first page has ${firstPage.length} rows, want 20`);
  await Promise.all([page.waitForURL(/cursor=/), page.click('#next-page')]);
  await page.waitForSelector('main[data-ready="search"]');
  const second = await page.$$eval('#result-table tbody tr', (t) => t.map((r) => r.dataset.traceId));
  check(second.length > 0 && second.every((id) => !firstPage.includes(id)), `the second page repeats the first: ${second}`);
  await page.waitForSelector('#first-page');
});

// The fan-in: every span is a node, and both DATA_DEPENDENCY edges point into the join.
await scenario('dag_draws_every_span_and_fan_in', async (page) => {
  await open(page, `/ui/trace/${c.fan_in}`, 'trace');
  const api = await (await page.request.get(`${base}/api/v1/traces/${c.fan_in}`)).json();
  const ids = await page.$$eval('#dag-panel .node.span', (n) => n.map((x) => x.dataset.id).sort());
  check(JSON.stringify(ids) === JSON.stringify(api.spans.map((s) => s.span_id).sort()), `nodes ${ids} != spans`);
  const dd = await page.$$eval('#dag-panel path.edge[data-type="DATA_DEPENDENCY"]', (p) => p.map((e) => [e.dataset.from, e.dataset.to]));
  const join = api.spans.find((s) => s.kind === 'JOIN').span_id;
  check(dd.length === 2 && dd.every(([, to]) => to === join), `DATA_DEPENDENCY edges ${JSON.stringify(dd)} do not both end at the join ${join}`);
  check(new Set(dd.map(([f]) => f)).size === 2, 'the two DATA_DEPENDENCY edges come from the same span');
  const pc = await page.$$eval('#dag-panel path.edge[data-type="PARENT_CHILD"]', (p) => p.length);
  check(pc === 1, `${pc} parent/child edges, want 1`);
  // Parent/child and data edges are drawn differently.
  const dashes = await page.$$eval('#dag-panel path.edge', (p) => p.map((e) => [e.dataset.type, getComputedStyle(e).strokeDasharray]));
  const dash = Object.fromEntries(dashes);
  check(dash.DATA_DEPENDENCY !== dash.PARENT_CHILD, `edges look the same: ${JSON.stringify(dashes)}`);
});

// The failing join: its critical path is marked, the error is marked, clicking the join shows
// its attributes, events, links and status message, the timeline follows, the sampling rule shows.
await scenario('critical_path_and_node_details', async (page) => {
  await open(page, `/ui/trace/${c.failing_join}`, 'trace');
  const api = await (await page.request.get(`${base}/api/v1/traces/${c.failing_join}`)).json();
  check(api.critical_path.length >= 2, 'fixture has no critical path');
  const crit = await page.$$eval('#dag-panel .node.critical', (n) => n.map((x) => x.dataset.id).sort());
  check(JSON.stringify(crit) === JSON.stringify([...api.critical_path].sort()), `critical nodes ${crit} != ${api.critical_path}`);
  const critEdges = await page.$$eval('#dag-panel path.edge.critical', (p) => p.length);
  check(critEdges >= api.critical_path.length - 1, `${critEdges} critical edges for a path of ${api.critical_path.length}`);
  const join = api.spans.find((s) => s.kind === 'JOIN');
  await page.waitForSelector(`#dag-panel .node.failed[data-id="${join.span_id}"]`);
  await page.click(`#dag-panel .node[data-id="${join.span_id}"]`);
  await page.waitForSelector('#detail table.kv');
  const detail = await page.textContent('#detail');
  for (const want of [join.operation, 'dataset', 'orders', 'records', 'schema mismatch', 'retry', 'DATA_DEPENDENCY']) {
    check(detail.includes(want), `the detail panel lacks ${JSON.stringify(want)}: ${detail}`);
  }
  check(new URL(page.url()).searchParams.get('span') === join.span_id, 'the URL does not hold the selection');
  await page.click('#tab-timeline');
  await page.waitForSelector(`.tl-row.selected[data-span-id="${join.span_id}"]`);
  // Keyboard: select another span in the timeline; the DAG follows.
  const other = api.spans.find((s) => s.kind === 'INGEST').span_id;
  await page.focus(`.tl-row[data-span-id="${join.span_id}"]`);
  await page.click(`.tl-row[data-span-id="${other}"]`);
  await page.click('#tab-dag');
  await page.waitForSelector(`#dag-panel .node.selected[data-id="${other}"]`);
  const sampling = await page.textContent('#sampling');
  check(sampling.includes('errors') && sampling.includes('1'), `sampling rule not shown: ${sampling}`);
});

// Keyboard only: tab to a node and press Enter.
await scenario('keyboard_selects_a_node', async (page) => {
  await open(page, `/ui/trace/${c.fan_in}`, 'trace');
  await page.focus('#dag-panel .node.span');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#dag-panel .node.selected');
  await page.waitForSelector('#detail h2');
});

// Across traces: the downstream FOLLOWS_FROM trace is one click away, and back upstream.
await scenario('follows_from_opens_downstream', async (page) => {
  await open(page, `/ui/trace/${c.chain[0]}`, 'trace');
  const link = `#downstream a.trace-link[href="/ui/trace/${c.chain[1]}"]`;
  await page.waitForSelector(link);
  check((await page.textContent('#downstream')).includes('FOLLOWS_FROM'), 'the link type is not shown');
  await Promise.all([page.waitForURL(new RegExp(`/ui/trace/${c.chain[1]}$`)), page.click(link)]);
  await page.waitForSelector('main[data-ready="trace"]');
  check((await page.textContent('h1')).includes('transform-job'), 'not the downstream trace');
  await page.waitForSelector(`#upstream a.trace-link[href="/ui/trace/${c.chain[0]}"]`);
  // The upstream span is also in the DAG, as a node of the other trace on a FOLLOWS_FROM
  // edge; selecting it opens that trace.
  const ext = `#dag-panel .node.external[data-id^="ext:${c.chain[0]}:"]`;
  await page.waitForSelector(ext);
  const ff = await page.$$eval('#dag-panel path.edge[data-type="FOLLOWS_FROM"]', (p) => p.map((e) => e.dataset.from));
  check(ff.length === 1 && ff[0].startsWith(`ext:${c.chain[0]}:`), `FOLLOWS_FROM edges in the DAG: ${ff}`);
  await Promise.all([page.waitForURL(new RegExp(`/ui/trace/${c.chain[0]}\\?span=`)), page.click(ext)]);
  await page.waitForSelector('main[data-ready="trace"]');
  // Lineage to depth 2 from the first trace reaches the third.
  await open(page, `/ui/lineage/${c.chain[0]}?direction=downstream&depth=2`, 'lineage');
  const nodes = await page.$$eval('#lineage .node', (n) => n.map((x) => x.dataset.id).sort());
  check(JSON.stringify(nodes) === JSON.stringify([...c.chain].sort()), `lineage nodes ${nodes}`);
  await Promise.all([page.waitForURL(new RegExp(`/ui/trace/${c.chain[2]}$`)), page.click(`#lineage .node[data-id="${c.chain[2]}"]`)]);
  // The datasets the links carry: listed with their producers and consumers; following one
  // keeps only the links naming it (the FOLLOWS_FROM hop to the first trace names none).
  await open(page, `/ui/lineage/${c.chain[2]}?direction=upstream&depth=2`, 'lineage');
  const up = await page.$$eval('#lineage .node', (n) => n.length);
  check(up === 3, `upstream lineage has ${up} traces`);
  const row = await page.$$eval('#lineage-datasets tbody tr', (r) => r.map((x) => [x.dataset.dataset, ...[...x.cells].slice(1).map((c) => c.textContent)]));
  check(JSON.stringify(row) === JSON.stringify([['warehouse.clean_files', '1', '1', '1']]), `dataset table ${JSON.stringify(row)}`);
  const edgeLabels = await page.textContent('#lineage');
  check(edgeLabels.includes('warehouse.clean_files'), 'the edge does not name its dataset');
  await Promise.all([page.waitForURL(/dataset=warehouse.clean_files/), page.click('#lineage-datasets a')]);
  await page.waitForSelector('main[data-ready="lineage"]');
  const only = await page.$$eval('#lineage .node', (n) => n.map((x) => x.dataset.id).sort());
  check(JSON.stringify(only) === JSON.stringify([c.chain[1], c.chain[2]].sort()), `one dataset's lineage ${only}`);
  check(await page.isVisible('#all-datasets'), 'no way back to every link');
  // Search by dataset: the traces that wrote or read it.
  await open(page, '/ui/search', 'search');
  await page.fill('#f-dataset', 'warehouse.clean_files');
  await Promise.all([page.waitForURL(/dataset=warehouse.clean_files/), page.click('#search-submit')]);
  await page.waitForSelector('main[data-ready="search"]');
  const found = await page.$$eval('#result-table tbody tr', (t) => t.map((r) => r.dataset.traceId).sort());
  check(JSON.stringify(found) === JSON.stringify([c.chain[1], c.chain[2]].sort()), `dataset search found ${found}`);
});

await scenario('unknown_trace_says_not_found', async (page) => {
  await open(page, '/ui/trace/0123456789abcdef0123456789abcdef', 'trace');
  await page.waitForSelector('.not-found');
  check((await page.textContent('.not-found')).includes('0123456789abcdef0123456789abcdef'), 'the message does not name the id');
  // A malformed id is the API's 400, shown as a message.
  await open(page, '/ui/trace/not-hex', 'trace');
  check((await page.textContent('.message.error')).includes('malformed trace id'), 'the API error is not shown');
});

// A query service with tokens: the page asks for one, says why a token was refused (wrong
// token, no query scope), draws the trace once a good one is given, keeps it for the tab
// (a reload needs no new token) and forgets it on request.
await scenario('token_prompt', async (page) => {
  check(c.query_token && c.ingest_token, 'the case names no tokens');
  await page.goto(`${base}/ui/trace/${c.failing_join}`);
  await page.waitForSelector('#auth form');
  check(await page.isHidden('main'), 'the page shows behind the token form');
  check((await page.textContent('#auth')).includes('needs a bearer token'), await page.textContent('#auth'));
  await page.fill('#auth-token', 'not-a-token-at-all');
  await page.click('#auth button[type=submit]');
  await page.waitForSelector('#auth form');
  check((await page.textContent('#auth')).includes('did not accept'), await page.textContent('#auth'));
  await page.fill('#auth-token', c.ingest_token);
  await page.click('#auth button[type=submit]');
  await page.waitForSelector('#auth form');
  check((await page.textContent('#auth')).includes('query scope'), await page.textContent('#auth'));
  await page.fill('#auth-token', c.query_token);
  await page.click('#auth button[type=submit]');
  await page.waitForSelector('main[data-ready="trace"] #dag-panel .node.span');
  check(await page.isHidden('#auth').catch(() => true), 'the token form stays');
  await page.reload();
  await page.waitForSelector('main[data-ready="trace"] #dag-panel .node.span');
  await page.click('#forget-token');
  await page.waitForSelector('#auth form');
});

await scenario('api_errors_are_messages', async (page) => {
  await open(page, '/ui/search?min_duration=fast', 'search');
  const msg = await page.textContent('#results .message.error');
  check(msg.includes('min_duration'), `the API's message is not shown: ${msg}`);
});

await scenario('pipeline_map', async (page) => {
  await open(page, `/ui/map?start=${encodeURIComponent(c.start)}&end=${encodeURIComponent(c.end)}`, 'map');
  const nodes = await page.$$eval('#map .node', (n) => n.map((x) => x.dataset.id));
  for (const s of ['kafka-ingest', 'cdc-ingest', 'spark-etl', 'transform-job']) check(nodes.includes(s), `service ${s} missing from ${nodes}`);
  const edge = await page.$$eval('#map path.edge', (p) => p.map((e) => `${e.dataset.from}>${e.dataset.to}`));
  check(edge.includes('ingest-job>transform-job'), `the FOLLOWS_FROM edge across traces is missing: ${edge}`);
  const labels = await page.textContent('#map .edge-labels');
  check(/\d+ calls · \d+% err/.test(labels), `no error rate on any edge: ${labels}`);
  // Grouped by dataset where spans follow the conventions: on the edges and in a table.
  const row = (await page.textContent('#edge-table')).replace(/\s+/g, ' ');
  check(row.includes('kafka://broker:9092/orders'), `the edge table names no dataset: ${row}`);
  const ds = await page.$$eval('#dataset-table tbody tr', (r) => r.map((x) => [...x.cells].map((c) => c.textContent)));
  const enriched = ds.find((r) => r[0] === 's3://lake/orders_enriched');
  check(enriched && enriched[1] === 'spark-etl' && enriched[2] === 'warehouse', `dataset table: ${JSON.stringify(ds)}`);
});

// 2,000 spans: the page first draws them grouped by service; every span drawn on request.
await scenario('large_trace_renders', async (page) => {
  let t0 = Date.now();
  await open(page, `/ui/trace/${c.large}`, 'trace');
  figures.large_grouped_ms = Date.now() - t0;
  check((await page.getAttribute('.graph-host', 'data-mode')) === 'service', 'a 2,000-span trace did not start grouped');
  t0 = Date.now();
  await page.selectOption('#dag-mode', 'spans');
  await page.waitForFunction(() => document.querySelectorAll('#dag-panel .node.span').length === 2000, null, { timeout: 120_000 });
  figures.large_all_spans_ms = Date.now() - t0;
  figures.large_all_spans_in_page_ms = Number(await page.getAttribute('.graph-host', 'data-render-ms'));
  figures.large_all_spans_layout_ms = Number(await page.getAttribute('.graph-host', 'data-layout-ms'));
  const rows = await page.$$eval('.tl-row', (r) => r.length);
  check(rows === 2000, `${rows} timeline rows`);
  // Pan and zoom still answer: zoom in with the button, the transform changes.
  const before = await page.getAttribute('#dag-panel g.viewport', 'transform');
  await page.click('#dag-panel button[aria-label="Zoom in"]');
  await page.waitForFunction((b) => document.querySelector('#dag-panel g.viewport').getAttribute('transform') !== b, before);
});

if (shotsDir) {
  await scenario('screenshots', async (page) => {
    await open(page, `/ui/search?start=${encodeURIComponent(c.start)}&end=${encodeURIComponent(c.end)}`, 'search');
    await page.screenshot({ path: `${shotsDir}/search.png` });
    await open(page, `/ui/trace/${c.failing_join}`, 'trace');
    const join = await page.$eval('#dag-panel .node.failed', (n) => n.dataset.id);
    await page.click(`#dag-panel .node[data-id="${join}"]`);
    await page.waitForSelector('#detail table.kv');
    await page.click('#dag-panel button[aria-label="Fit to view"]');
    await page.screenshot({ path: `${shotsDir}/dag.png` });
    await page.click('#tab-timeline');
    await page.waitForSelector('.tl-row.selected');
    await page.screenshot({ path: `${shotsDir}/timeline.png` });
    await open(page, `/ui/map?start=${encodeURIComponent(c.start)}&end=${encodeURIComponent(c.before_large)}`, 'map');
    await page.screenshot({ path: `${shotsDir}/pipeline-map.png` });
  });
}

await browser.close();
if (offOrigin.length) results.push({ name: 'no_off_origin_requests', ok: false, error: offOrigin.join(', ') });
else results.push({ name: 'no_off_origin_requests', ok: true });
if (consoleErrors.length) results.push({ name: 'no_console_errors', ok: false, error: consoleErrors.join('\n') });
else results.push({ name: 'no_console_errors', ok: true });
console.log(JSON.stringify({ results, figures }));
process.exit(results.every((r) => r.ok) ? 0 : 1);
