// Models: the menu from GET /api/models (fetched at load, when the Models view is opened, and
// after switches, downloads and deletes end), overlaid with live data from the state: what is
// loaded now and download progress.

import { h, $, patch, setText, setAttr, field, checkbox, fill } from './dom.js';
import { gb, dur, GB } from './fmt.js';
import { api, get, seg } from './api.js';
import { confirmAction, toast, busy, say, note } from './ui.js';
import { store, part, nodes, loadedNow } from './store.js';
import { follow, runningSwap } from './swap.js';

const cards = new Map(); // key -> {el, r, model}
const seenDownloads = new Map(); // download id -> status
let loading = null;
let lastLoad = 0;

const STATE = {
  loaded: ['Loaded now', 'ok'],
  ready: ['On disk, ready to switch', 'info'],
  incomplete: ['Download interrupted', 'warn'],
  partial: ['On too few boxes', 'warn'],
  downloadable: ['Not downloaded yet', ''],
  missing: ['Folder not found on any box', 'bad'],
  needs_setup: ['Needs setup', 'warn'],
};
const ORDER = ['loaded', 'ready', 'needs_setup', 'incomplete', 'partial', 'downloadable', 'missing'];
const WEIGHTS = {
  present: 'on disk',
  incomplete: 'partly downloaded',
  absent: 'not on this box',
  unknown: 'could not look',
};
const CAPS = {
  vision: 'understands images', reasoning: 'reasoning', tools: 'can call tools', embedding: 'embeddings (for search)',
};

/** Split a command line into arguments: whitespace separated, '…' and "…" quoting. */
export function splitArgs(text) {
  const out = [];
  let cur = '';
  let quote = null;
  let has = false;
  for (const ch of text) {
    if (quote) {
      if (ch === quote) quote = null; else cur += ch;
    } else if (ch === '"' || ch === "'") {
      quote = ch; has = true;
    } else if (/\s/.test(ch)) {
      if (has || cur) out.push(cur);
      cur = ''; has = false;
    } else {
      cur += ch;
    }
  }
  if (has || cur) out.push(cur);
  return out;
}

function displayState(m) {
  const live = loadedNow();
  if (store.state && part('status')) {
    if (live.has(m.key)) return 'loaded';
    if (m.state === 'loaded') return 'ready';
  }
  return m.state;
}

function isLoaded(m) {
  if (store.state && part('status')) return loadedNow().has(m.key);
  return (m.loaded_on || []).length > 0;
}

function sizeBytes(m) {
  const disk = (m.nodes || []).map((n) => n.size_bytes).filter((v) => v != null);
  if (disk.length) return Math.max(...disk);
  return m.recipe && m.recipe.size_gb != null ? m.recipe.size_gb * GB : null;
}

function downloadsFor(m) {
  const repo = m.recipe && m.recipe.repo;
  const d = part('downloads');
  const list = (d && d.downloads) || [];
  return repo ? list.filter((x) => x.repo === repo) : [];
}

// ---------------------------------------------------------------------------------------------
// Loading

export async function loadModels(reason) {
  if (loading) return loading;
  const status = $('#models-status');
  status.textContent = reason === 'initial' ? 'Looking at what is on the boxes…' : 'Scanning the boxes…';
  loading = (async () => {
    try {
      const menu = await get('/api/models');
      store.menu = menu;
      lastLoad = Date.now();
      renderMenu();
      const n = (menu.models || []).length;
      status.textContent = `${n} ${n === 1 ? 'model' : 'models'}; scanned ${new Date().toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}.`;
    } catch (e) {
      status.textContent = '';
      fill($('#models-warnings'), note('error', `Could not read the models: ${e.message}`));
    } finally {
      loading = null;
    }
  })();
  return loading;
}

/** The Models view was opened: refresh unless it is fresh. */
export function modelsOpened() {
  if (Date.now() - lastLoad > 10000) loadModels();
}

// ---------------------------------------------------------------------------------------------
// Cards

function buildCard(m) {
  const r = {};
  r.info = h('div', { class: 'model-info' });
  r.progress = h('div', { class: 'download-progress', 'aria-live': 'polite' });
  const btn = (action, label, cls) => h('button', { type: 'button', class: cls || '', dataset: { action } }, label);
  r.switch = btn('switch', 'Switch', 'primary');
  r.test = btn('test', 'Test');
  r.download = btn('download', 'Download');
  r.delete = btn('delete', 'Delete weights', 'danger-outline');
  r.knobs = btn('knobs', 'Advanced');
  r.remove = btn('remove', 'Remove recipe', 'ghost');
  r.knobs.setAttribute('aria-expanded', 'false');
  r.download.setAttribute('aria-expanded', 'false');
  r.actions = h('div', { class: 'actions' }, r.switch, r.test, r.download, r.delete, r.knobs, r.remove);
  r.panel = h('div', { class: 'model-panel', hidden: true });
  r.result = h('div', { class: 'result', 'aria-live': 'polite' });
  const el = h('article', { class: 'card model', dataset: { model: m.key } }, r.info, r.progress, r.actions, r.result, r.panel);
  const card = { el, r, model: m, open: null };
  r.switch.addEventListener('click', () => doSwitch(card));
  r.test.addEventListener('click', () => doTest(card));
  r.download.addEventListener('click', () => togglePanel(card, 'download'));
  r.delete.addEventListener('click', () => doDelete(card));
  r.knobs.addEventListener('click', () => togglePanel(card, 'knobs'));
  r.remove.addEventListener('click', () => doRemove(card));
  return card;
}

function renderInfo(card) {
  const m = card.model;
  const st = displayState(m);
  const live = loadedNow().get(m.key);
  setAttr(card.el, 'data-state', st);
  card.el.classList.toggle('loaded', st === 'loaded');
  const recipe = m.recipe || {};
  patch(card.r.info, { m, st, live }, () => {
    const [word, cls] = STATE[st] || [st, ''];
    const size = sizeBytes(m);
    const caps = recipe.capabilities || [];
    const where = recipe.repo ? recipe.repo : recipe.path ? `folder ${recipe.path}` : '';
    const out = [];
    out.push(h('header', { class: 'card-head' },
      h('h3', { class: 'model-name' }, m.name || m.key),
      h('span', { class: `badge ${cls}` }, word)));
    out.push(h('p', { class: 'muted model-key' }, h('span', { class: 'mono' }, m.key), where ? ` · ${where}` : ''));
    if (recipe.description) out.push(h('p', { class: 'desc' }, recipe.description));
    if (caps.length) out.push(h('ul', { class: 'chips', 'aria-label': 'What it can do' }, caps.map((c) => h('li', { class: 'chip' }, CAPS[c] || c))));
    const facts = h('dl', { class: 'facts' });
    const fact = (k, ...v) => facts.append(h('dt', null, k), h('dd', null, ...v));
    fact('Size', size != null ? gb(size) : 'unknown');
    fact('Runs on', recipe.mode === 'cluster' ? `${recipe.nodes || 2} boxes together` : 'one box');
    if (recipe.expected_ready_seconds) fact('Takes', `about ${dur(recipe.expected_ready_seconds)} to load`);
    const memNodes = (m.nodes || []).filter((n) => n.gpu_memory_gb != null);
    if (m.gpu_memory_utilization != null) {
      const same = memNodes.length > 1 && memNodes.every((n) => n.gpu_memory_gb === memNodes[0].gpu_memory_gb && n.memory_total_gb === memNodes[0].memory_total_gb);
      const detail = same
        ? ` (${memNodes[0].gpu_memory_gb} GB of ${memNodes[0].memory_total_gb} GB on each box)`
        : memNodes.length ? ` (${memNodes.map((n) => `${n.gpu_memory_gb} GB of ${n.memory_total_gb} GB on ${n.name}`).join('; ')})` : '';
      fact('GPU memory', `${Math.round(m.gpu_memory_utilization * 100)}% of the box's memory`, detail);
    }
    if (recipe.on_demand) fact('On demand', 'loads by itself when an app asks for it');
    if (recipe.license) fact('License', recipe.license);
    if (m.source) fact('From', { bundled: 'built in', file: 'a recipe file', api: 'added here', confirmed: 'set up here' }[m.source] || m.source);
    out.push(facts);
    // Where the files are
    const ns = m.nodes || [];
    if (ns.length) {
      out.push(h('ul', { class: 'weights', 'aria-label': 'Files on each box' }, ns.map((n) => h('li', { dataset: { weightsNode: n.name, weights: n.weights } },
        h('span', { class: `dot ${n.weights}`, 'aria-hidden': 'true' }),
        h('strong', null, n.name), ': ', WEIGHTS[n.weights] || n.weights,
        n.size_bytes != null ? ` (${gb(n.size_bytes)})` : '',
        n.scan_error ? h('small', { class: 'muted' }, ` — ${n.scan_error}`) : null))));
    }
    if (live && live.length) {
      out.push(h('p', { class: 'loaded-on' }, 'Running on ', live.map((n) => `${n.name} (${n.ready ? 'ready' : n.state === 'running' ? 'starting' : n.state})`).join(', '), '.'));
    }
    if (m.needs_setup) out.push(renderSetup(card));
    return out;
  });
}

function renderSetup(card) {
  const m = card.model;
  const recipe = m.recipe || {};
  const notes = m.inferred_notes || [];
  const image = h('input', { type: 'text', value: (recipe.runtime && recipe.runtime.image) || '', autocomplete: 'off' });
  const mode = h('select', null,
    h('option', { value: 'solo', selected: recipe.mode !== 'cluster' }, 'one box'),
    h('option', { value: 'cluster', selected: recipe.mode === 'cluster' }, 'several boxes together'));
  const confirmBtn = h('button', { type: 'button', class: 'primary', dataset: { action: 'confirm' } }, 'Confirm this setup');
  const result = h('div', { class: 'result', 'aria-live': 'polite' });
  confirmBtn.addEventListener('click', () => busy(confirmBtn, 'Saving…', async () => {
    const body = {};
    const img = image.value.trim();
    if (img && img !== ((recipe.runtime && recipe.runtime.image) || '')) body.runtime = { ...(recipe.runtime || {}), image: img };
    if (mode.value !== (recipe.mode || 'solo')) body.mode = mode.value;
    try {
      await api('POST', m.confirm_url || `/api/models/${seg(m.key)}/confirm`, body);
      toast(`${m.name || m.key} is set up: you can switch to it now.`, 'ok');
      loadModels();
    } catch (e) {
      say(result, 'error', `Could not confirm: ${e.message}`);
    }
  }));
  return h('div', { class: 'setup' },
    h('p', null, h('strong', null, 'Found on disk, but Spark Control does not know how to run it yet. '),
      'Here is its best guess from the model\'s own description. Check it and confirm once.'),
    notes.length ? h('ul', { class: 'notes' }, notes.map((n) => h('li', null, n))) : null,
    h('details', null, h('summary', null, 'The guessed launch settings'),
      h('pre', { class: 'commands' }, [`image: ${(recipe.runtime && recipe.runtime.image) || '?'}`, `mode: ${recipe.mode || 'solo'}`,
        `arguments: ${(recipe.args || []).join(' ') || '(none)'}`].join('\n'))),
    h('div', { class: 'setup-form' }, field('Runtime image', image).wrap, field('Runs on', mode).wrap),
    h('div', { class: 'row' }, confirmBtn), result);
}

function renderProgress(card) {
  const m = card.model;
  const list = downloadsFor(m);
  const d = list.find((x) => x.status === 'running') || list[0];
  patch(card.r.progress, d || null, () => {
    if (!d) return null;
    const head = d.status === 'running' ? 'Downloading' : d.status === 'done' ? 'Downloaded' : 'Download failed';
    return h('div', { class: `dl ${d.status}`, dataset: { download: d.id } },
      h('p', null, h('strong', null, head), d.revision ? ` (revision ${d.revision})` : ''),
      (d.nodes || []).map((n) => {
        const known = n.total_bytes != null && n.total_bytes > 0;
        const p = h('progress', { max: known ? n.total_bytes : 1, 'aria-label': `Download to ${n.name}` });
        if (known) p.value = Math.min(n.current_bytes || 0, n.total_bytes);
        else if (n.status === 'done') p.value = 1;
        else if (n.status === 'failed') p.value = 0;
        // else: no value, an indeterminate bar while the size is unknown
        let text;
        if (n.status === 'done') text = `done${n.result && n.result.Downloaded ? ` — ${gb(n.result.Downloaded.bytes)}, ${n.result.Downloaded.files} files` : ''}`;
        else if (n.status === 'failed') text = `failed: ${n.error || 'no reason given'}`;
        else text = known ? `${gb(n.current_bytes)} of ${gb(n.total_bytes)} (${Math.floor((100 * n.current_bytes) / n.total_bytes)}%)` : n.current_bytes ? `${gb(n.current_bytes)} so far` : 'starting…';
        return h('div', { class: `dl-node ${n.status}`, dataset: { dlNode: n.name } },
          h('span', { class: 'dl-name' }, n.name), p, h('small', null, text));
      }));
  });
}

function renderButtons(card) {
  const m = card.model;
  const r = card.r;
  const canRemove = m.source === 'api' || m.source === 'confirmed';
  r.remove.hidden = !canRemove;
  r.download.hidden = false;
  r.delete.hidden = false;
  const st = displayState(m);
  setText(r.switch, st === 'loaded' ? 'Switch (reload)' : 'Switch');
}

function renderCard(card) {
  renderInfo(card);
  renderProgress(card);
  renderButtons(card);
}

function sortModels(list) {
  return [...list].sort((a, b) => {
    const d = ORDER.indexOf(displayState(a)) - ORDER.indexOf(displayState(b));
    return d || (a.name || a.key).localeCompare(b.name || b.key);
  });
}

function renderMenu() {
  const menu = store.menu;
  if (!menu) return;
  const warnings = [...(menu.warnings || [])];
  for (const n of menu.nodes || []) {
    if (n.scan_error) warnings.push(`${n.name}: ${n.scan_error}`);
    for (const w of n.warnings || []) warnings.push(`${n.name}: ${w}`);
  }
  patch($('#models-warnings'), warnings, () => warnings.length
    ? h('details', { class: 'note warn' }, h('summary', null, `${warnings.length} ${warnings.length === 1 ? 'thing' : 'things'} could not be read`),
      h('ul', null, warnings.map((w) => h('li', null, w))))
    : null);
  const box = $('#model-cards');
  const list = sortModels(menu.models || []);
  const seen = new Set();
  list.forEach((m, i) => {
    seen.add(m.key);
    let card = cards.get(m.key);
    if (!card) { card = buildCard(m); cards.set(m.key, card); }
    card.model = m;
    if (box.children[i] !== card.el) box.insertBefore(card.el, box.children[i] || null);
    renderCard(card);
    if (card.open === 'knobs') refreshKnobHints(card);
  });
  for (const [key, card] of cards) if (!seen.has(key)) { card.el.remove(); cards.delete(key); }
  if (list.length === 0) fill(box, h('p', { class: 'empty' }, 'No models: add one below.'));
}

/** Live state arrived: refresh what depends on it, and reload the menu when downloads end. */
export function updateModels() {
  const d = part('downloads');
  let ended = false;
  for (const x of (d && d.downloads) || []) {
    const prev = seenDownloads.get(x.id);
    if (prev === 'running' && x.status !== 'running') ended = true;
    seenDownloads.set(x.id, x.status);
  }
  for (const card of cards.values()) renderCard(card);
  if (ended) loadModels();
}

// ---------------------------------------------------------------------------------------------
// Actions

async function doSwitch(card) {
  const m = card.model;
  const r = card.r;
  if (m.needs_setup) {
    say(r.result, 'error', 'This model needs its setup confirmed first (see above).');
    return;
  }
  const active = runningSwap();
  if (active && active.model !== m.key) {
    say(r.result, 'error', `A switch to ${active.model} is running; wait for it to end.`);
    return;
  }
  const lock = part('lock');
  const live = loadedNow();
  const current = [...live.keys()].filter((k) => k !== m.key);
  const names = (k) => { const x = store.menu && store.menu.models.find((y) => y.key === k); return x ? x.name || k : k; };
  const st = displayState(m);
  let q = `Switch the GPU to ${m.name || m.key}?`;
  if (current.length) q += ` ${current.map(names).join(' and ')} will be stopped first, and apps using it will get errors until the new model is ready.`;
  else if (st === 'loaded') q += ' It is loaded already: it will be stopped and started again.';
  else q += ' No other model is loaded now.';
  const expected = m.recipe && m.recipe.expected_ready_seconds;
  if (expected) q += ` Loading usually takes about ${dur(expected)}.`;
  if (['downloadable', 'missing', 'incomplete', 'partial'].includes(st)) {
    q += ' Note: its files are not (all) on the boxes yet, so the switch will most likely stop at the first check. Download it first.';
  }
  if (lock && lock.held) q += ` The GPU is reserved by "${lock.holder}", so the controller will probably refuse.`;
  const yes = await confirmAction(q, { yes: 'Switch now', title: 'Switch models' });
  if (!yes) return;
  await busy(r.switch, 'Starting…', () => startSwap(card, {}));
}

async function startSwap(card, extra) {
  const m = card.model;
  const r = card.r;
  try {
    const job = await api('POST', '/api/swap', { key: m.key, ...extra });
    say(r.result, 'ok', 'Switch started. Follow it in "Now running on the GPU".');
    follow(job);
    const sw = $('#swap');
    if (sw && sw.scrollIntoView) sw.scrollIntoView({ behavior: 'smooth', block: 'start' });
  } catch (e) {
    say(r.result, 'error', `Could not switch: ${e.message}`);
    if (e.status === 423) r.result.append(lockTokenForm(card));
  }
}

/** When the GPU is reserved: the holder may present the reservation's token. */
function lockTokenForm(card) {
  const input = h('input', { type: 'password', autocomplete: 'off', spellcheck: 'false', placeholder: 'sclk_…' });
  const go = h('button', { type: 'submit', class: 'small', dataset: { action: 'switch-with-token' } }, 'Switch with this token');
  const form = h('form', { class: 'lock-token', novalidate: true },
    field('If the reservation is yours, paste its token', input).wrap, h('div', { class: 'row' }, go));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const token = input.value.trim();
    if (!token) { input.focus(); return; }
    busy(go, 'Starting…', () => startSwap(card, { lock_token: token }));
  });
  return form;
}

async function doTest(card) {
  const m = card.model;
  openPanel(card, 'test');
  const panel = card.r.panel;
  fill(panel, h('p', { class: 'muted', role: 'status' }, 'Testing: checking the files, the memory, the runtime image and the launch arguments (this can take a minute)…'));
  await busy(card.r.test, 'Testing…', async () => {
    try {
      const res = await api('POST', `/api/swap/${seg(m.key)}/validate`, {});
      const checks = res.checks || [];
      const failed = checks.filter((c) => !c.ok);
      fill(panel,
        h('h4', null, 'Test result'),
        note(res.ok ? 'ok' : 'error', res.ok ? 'All checks passed: this model should start.' : `${failed.length} of ${checks.length} checks failed: it would not start as it is.`),
        h('ul', { class: 'checks', dataset: { testResult: res.ok ? 'ok' : 'failed' } }, checks.map((c) => h('li', { class: c.ok ? 'ok' : 'bad', dataset: { check: c.name } },
          h('span', { class: 'check-mark', 'aria-hidden': 'true' }, c.ok ? '✓' : '✗'),
          h('span', { class: 'visually-hidden' }, c.ok ? 'passed: ' : 'failed: '),
          h('strong', null, c.name), c.node ? ` on ${c.node}` : '', ': ',
          h('span', { class: 'detail' }, c.detail || '')))),
        res.argv ? h('details', null, h('summary', null, 'The command it would run'), h('pre', { class: 'commands' }, res.argv.join(' '))) : null,
        closeButton(card));
    } catch (e) {
      fill(panel, note('error', `The test could not run: ${e.message}`), closeButton(card));
    }
  });
}

function closeButton(card) {
  return h('button', { type: 'button', class: 'small ghost', onclick: () => closePanel(card) }, 'Close');
}

function openPanel(card, what) {
  card.open = what;
  card.r.panel.hidden = false;
  card.r.knobs.setAttribute('aria-expanded', String(what === 'knobs'));
  card.r.download.setAttribute('aria-expanded', String(what === 'download'));
}

function closePanel(card) {
  card.open = null;
  card.r.panel.hidden = true;
  card.r.panel.replaceChildren();
  card.r.knobs.setAttribute('aria-expanded', 'false');
  card.r.download.setAttribute('aria-expanded', 'false');
}

function togglePanel(card, what) {
  if (card.open === what) { closePanel(card); return; }
  openPanel(card, what);
  if (what === 'download') buildDownload(card);
  if (what === 'knobs') buildKnobs(card);
}

function buildDownload(card) {
  const m = card.model;
  const recipe = m.recipe || {};
  const panel = card.r.panel;
  if (!recipe.repo) {
    fill(panel, note('info', `This model is a folder on the boxes (${recipe.path || 'no path'}), not a Hugging Face repository: copy the folder to the box yourself.`), closeButton(card));
    return;
  }
  const running = downloadsFor(m).find((x) => x.status === 'running');
  const live = nodes();
  const byId = new Map((m.nodes || []).map((n) => [n.node_id, n]));
  const boxes = live.map((n) => {
    const w = byId.get(n.id);
    const has = w && w.weights === 'present';
    const cb = checkbox(`${n.name}${n.connected ? '' : ' (offline)'}${has ? ' — already there' : w && w.weights === 'incomplete' ? ' — partly there, will resume' : ''}`,
      { value: n.id, checked: n.connected && !has, disabled: !n.connected, dataset: { downloadNode: n.name } });
    return cb;
  });
  const rev = h('input', { type: 'text', placeholder: recipe.revision || 'main', autocomplete: 'off', spellcheck: 'false' });
  const start = h('button', { type: 'button', class: 'primary', dataset: { action: 'download-start' } }, 'Start download');
  const result = h('div', { class: 'result', 'aria-live': 'polite' });
  start.addEventListener('click', () => busy(start, 'Starting…', async () => {
    const chosen = boxes.filter((b) => b.input.checked).map((b) => b.input.value);
    if (chosen.length === 0) { say(result, 'error', 'Choose at least one box.'); return; }
    const body = { repo: recipe.repo, nodes: chosen };
    const rv = rev.value.trim() || recipe.revision;
    if (rv) body.revision = rv;
    try {
      const res = await api('POST', '/api/models/download', body);
      const id = res.id || (res.download && res.download.id);
      if (id) seenDownloads.set(id, 'running');
      closePanel(card);
      say(card.r.result, 'ok', 'Download started. The progress shows on this card; it goes on even if you close the page.');
    } catch (e) {
      say(result, 'error', `Could not start the download: ${e.message}`);
    }
  }));
  const size = sizeBytes(m);
  fill(panel,
    h('h4', null, `Download ${recipe.repo}`),
    size != null ? h('p', { class: 'muted' }, `About ${gb(size)} per box. Check the free disk space on the box cards above.`) : null,
    running ? note('info', 'A download of this model is already running.') : null,
    live.length ? h('fieldset', null, h('legend', null, 'To which boxes?'), boxes.map((b) => b.wrap)) : note('error', 'No boxes have joined yet.'),
    field('Revision (optional: a branch, tag or commit)', rev).wrap,
    recipe.license ? h('p', { class: 'muted small-print' }, `License: ${recipe.license}. Gated models need your Hugging Face token in Settings.`) : null,
    h('div', { class: 'row' }, start, closeButton(card)), result);
}

async function doDelete(card) {
  const m = card.model;
  const r = card.r;
  const recipe = m.recipe || {};
  const name = m.name || m.key;
  closePanel(card);
  if (isLoaded(m)) {
    say(r.result, 'error', `${name} is loaded now. Switch to another model first; Spark Control never deletes the files of the running model.`);
    return;
  }
  const active = runningSwap();
  if (active && active.model === m.key) {
    say(r.result, 'error', `A switch to ${name} is running; wait for it to end.`);
    return;
  }
  if (downloadsFor(m).some((x) => x.status === 'running')) {
    say(r.result, 'error', `${name} is being downloaded right now; wait for the download to end.`);
    return;
  }
  const withFiles = (m.nodes || []).filter((n) => n.weights === 'present' || n.weights === 'incomplete');
  if (withFiles.length === 0) {
    say(r.result, 'info', `No box holds files of ${name}: nothing to delete.`);
    return;
  }
  if (withFiles.length === 1) {
    await deleteFrom(card, withFiles[0], r.delete);
    return;
  }
  openPanel(card, 'delete');
  fill(r.panel, h('h4', null, 'Delete the files from which box?'),
    h('div', { class: 'row wrap' }, withFiles.map((n) => {
      const b = h('button', { type: 'button', class: 'danger-outline', dataset: { action: 'delete-node', targetNode: n.name } },
        `From ${n.name}${n.size_bytes != null ? ` (${gb(n.size_bytes)})` : ''}`);
      b.addEventListener('click', () => deleteFrom(card, n, b));
      return b;
    })), closeButton(card));
  if (!recipe.repo && !recipe.path) say(r.result, 'error', 'This recipe names neither a repository nor a folder.');
}

async function deleteFrom(card, n, button) {
  const m = card.model;
  const recipe = m.recipe || {};
  const name = m.name || m.key;
  const yes = await confirmAction(`Delete the files of ${name} from ${n.name}? This frees about ${n.size_bytes != null ? gb(n.size_bytes) : 'its size'} of disk. You can download them again later.`,
    { yes: 'Delete the files', title: 'Delete model files' });
  if (!yes) return;
  const body = { node: n.node_id };
  if (recipe.repo) body.repo = recipe.repo;
  else body.path = n.path || recipe.path;
  await busy(button, 'Deleting…', async () => {
    try {
      const res = await api('DELETE', '/api/models/disk', body);
      closePanel(card);
      say(card.r.result, 'ok', `Deleted. ${gb(res.freed_bytes)} freed on ${n.name}.`);
      toast(`${gb(res.freed_bytes)} freed on ${n.name}.`, 'ok');
      loadModels();
    } catch (e) {
      say(card.r.result, 'error', `Could not delete: ${e.message}`);
    }
  });
}

async function doRemove(card) {
  const m = card.model;
  const yes = await confirmAction(`Remove the recipe of ${m.name || m.key}? The model's files stay on disk (use Delete weights for those).`, { yes: 'Remove recipe' });
  if (!yes) return;
  await busy(card.r.remove, 'Removing…', async () => {
    try {
      await api('DELETE', `/api/models/${seg(m.key)}`);
      toast(`Recipe ${m.key} removed.`, 'ok');
      loadModels();
    } catch (e) {
      say(card.r.result, 'error', `Could not remove it: ${e.message}`);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Knobs

const TRI = [['', "the recipe's choice"], ['true', 'on'], ['false', 'off']];

function refreshKnobHints(card) {
  if (card.knobHint) card.knobHint();
}

async function buildKnobs(card) {
  const m = card.model;
  const panel = card.r.panel;
  fill(panel, h('p', { class: 'muted', role: 'status' }, 'Loading the settings…'));
  let view;
  try {
    view = await get(`/api/models/${seg(m.key)}/knobs`);
  } catch (e) {
    fill(panel, note('error', `Could not read the settings: ${e.message}`), closeButton(card));
    return;
  }
  if (card.open !== 'knobs') return;
  const k = view.knobs || {};
  const num = (name, props) => h('input', { type: 'number', name, inputmode: 'numeric', value: k[name] != null ? String(k[name]) : '', ...props });
  const tri = (name) => h('select', { name }, TRI.map(([v, label]) => h('option', { value: v, selected: String(k[name] ?? '') === v }, label)));
  const i = {
    max_model_len: num('max_model_len', { min: 1, step: 1, placeholder: "recipe's value" }),
    gpu_memory_utilization: num('gpu_memory_utilization', { min: 0.01, max: 1, step: 0.01, placeholder: String(view.gpu_memory_utilization ?? '') }),
    max_num_batched_tokens: num('max_num_batched_tokens', { min: 1, step: 1, placeholder: "recipe's value" }),
    fastsafetensors: tri('fastsafetensors'),
    prefix_caching: tri('prefix_caching'),
    fp8_kv_cache: tri('fp8_kv_cache'),
  };
  const gbHint = h('span', { 'aria-live': 'polite' });
  const hint = () => {
    const f = i.gpu_memory_utilization.value ? Number(i.gpu_memory_utilization.value) : view.gpu_memory_utilization;
    const ns = (view.nodes || []).filter((n) => n.memory_total_gb != null);
    if (!Number.isFinite(f) || f <= 0 || f > 1) { gbHint.textContent = 'Enter a number above 0 and at most 1 (e.g. 0.8 for 80%).'; return; }
    gbHint.textContent = ns.length
      ? `${Math.round(f * 100)}% = ${ns.map((n) => `${(f * n.memory_total_gb).toFixed(1)} GB of ${n.memory_total_gb} GB on ${n.name}`).join('; ')}. On a DGX Spark the GPU and CPU share this memory, so leave room for the rest.`
      : `${Math.round(f * 100)}% of the GPU memory.`;
  };
  card.knobHint = hint;
  i.gpu_memory_utilization.addEventListener('input', hint);
  hint();
  const preview = h('pre', { class: 'commands' }, (view.argv_preview || []).join(' '));
  const save = h('button', { type: 'submit', class: 'primary', dataset: { action: 'knobs-save' } }, 'Save');
  const reset = h('button', { type: 'button', dataset: { action: 'knobs-reset' } }, "Back to the recipe's values");
  const result = h('div', { class: 'result', 'aria-live': 'polite' });
  const form = h('form', { class: 'knobs', novalidate: true },
    h('h4', null, 'Advanced settings'),
    h('p', { class: 'muted' }, 'Each setting replaces the matching launch option of the recipe. They apply at the next switch to this model. Leave a field empty to keep the recipe\'s value.'),
    h('div', { class: 'grid2' },
      field('GPU memory share (0–1)', i.gpu_memory_utilization, gbHint).wrap,
      field('Longest context (tokens)', i.max_model_len, 'max-model-len: how much text one conversation may hold.').wrap,
      field('Tokens per batch', i.max_num_batched_tokens, 'max-num-batched-tokens: raise it (e.g. 16384) for image and hybrid models.').wrap,
      field('Fast loading (fastsafetensors)', i.fastsafetensors).wrap,
      field('Reuse repeated prompts (prefix caching)', i.prefix_caching).wrap,
      field('Compact memory for context (FP8 KV cache)', i.fp8_kv_cache).wrap),
    h('details', null, h('summary', null, 'The command it will run'), preview),
    h('div', { class: 'row' }, save, reset, closeButton(card)), result);
  const put = async (body, button) => busy(button, 'Saving…', async () => {
    try {
      const v = await api('PUT', `/api/models/${seg(m.key)}/knobs`, body);
      view = v;
      preview.textContent = (v.argv_preview || []).join(' ');
      hint();
      say(result, 'ok', 'Saved. They apply at the next switch to this model.');
      loadModels();
    } catch (e) {
      say(result, 'error', `Not saved: ${e.message}`);
    }
  });
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const body = {};
    for (const name of ['max_model_len', 'max_num_batched_tokens']) if (i[name].value !== '') body[name] = Math.round(Number(i[name].value));
    if (i.gpu_memory_utilization.value !== '') body.gpu_memory_utilization = Number(i.gpu_memory_utilization.value);
    for (const name of ['fastsafetensors', 'prefix_caching', 'fp8_kv_cache']) if (i[name].value !== '') body[name] = i[name].value === 'true';
    put(body, save);
  });
  reset.addEventListener('click', () => {
    for (const name of Object.keys(i)) i[name].value = '';
    put({}, reset);
  });
  fill(panel, form);
}

// ---------------------------------------------------------------------------------------------
// Adding a model

function buildAddForm() {
  const body = $('#add-model-body');
  const key = h('input', { type: 'text', required: true, pattern: '[a-z0-9][a-z0-9._\\-]{0,63}', autocomplete: 'off', spellcheck: 'false', placeholder: 'my-model' });
  const name = h('input', { type: 'text', required: true, autocomplete: 'off', placeholder: 'My fine-tuned model' });
  const kind = h('select', null, h('option', { value: 'repo' }, 'a Hugging Face repository'), h('option', { value: 'path' }, 'a folder on the box(es)'));
  const repo = h('input', { type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'org/name' });
  const path = h('input', { type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: '/srv/models/my-finetune' });
  const revision = h('input', { type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'main' });
  const image = h('input', { type: 'text', autocomplete: 'off', spellcheck: 'false', value: 'vllm-node' });
  const mode = h('select', null, h('option', { value: 'solo' }, 'one box'), h('option', { value: 'cluster' }, 'two boxes together'));
  const args = h('textarea', { rows: 3, spellcheck: 'false', placeholder: '--max-model-len 32768 --gpu-memory-utilization 0.8' });
  const desc = h('textarea', { rows: 2 });
  const size = h('input', { type: 'number', min: 0, step: 0.1, inputmode: 'decimal' });
  const ready = h('input', { type: 'number', min: 1, step: 1, inputmode: 'numeric', placeholder: '300' });
  const caps = ['vision', 'reasoning', 'tools', 'embedding'].map((c) => checkbox(CAPS[c], { value: c }));
  const onDemand = checkbox('Load it by itself when an app asks for it (on demand)');
  const repoF = field('Repository', repo, 'As on huggingface.co, e.g. Qwen/Qwen3-8B.');
  const pathF = field('Folder', path, 'The absolute path of the model folder on the box(es); it must be inside a model directory the agent is allowed to read.');
  const revF = field('Revision (optional)', revision);
  const sync = () => { const isRepo = kind.value === 'repo'; repoF.wrap.hidden = !isRepo; revF.wrap.hidden = !isRepo; pathF.wrap.hidden = isRepo; };
  kind.addEventListener('change', sync);
  sync();
  const yaml = h('textarea', { rows: 10, spellcheck: 'false', placeholder: 'key: my-model\nname: My model\nrepo: org/name\nruntime:\n  image: vllm-node\nargs: [--max-model-len, "32768"]' });
  const useYaml = checkbox('I have a recipe file (YAML) instead');
  const formFields = h('div', { class: 'grid2' },
    field('Short id (letters, digits, - . _)', key).wrap, field('Display name', name).wrap,
    field('Where are the files?', kind).wrap, repoF.wrap, pathF.wrap, revF.wrap,
    field('Runtime image', image, 'The vLLM container image on the boxes.').wrap, field('Runs on', mode).wrap,
    field('Size in GB (optional)', size).wrap, field('Seconds to load, roughly (optional)', ready).wrap);
  const more = h('div', null,
    field('Launch options for vLLM (optional)', args, 'Separated by spaces; quote values that contain spaces.').wrap,
    field('Description (optional)', desc).wrap,
    h('fieldset', null, h('legend', null, 'What it can do'), caps.map((c) => c.wrap)), onDemand.wrap);
  const yamlF = field('Recipe (YAML)', yaml, 'Spark Control\'s recipe format or a spark-vllm-docker recipe file.');
  yamlF.wrap.hidden = true;
  useYaml.input.addEventListener('change', () => {
    const y = useYaml.input.checked;
    yamlF.wrap.hidden = !y; formFields.hidden = y; more.hidden = y;
  });
  const submit = h('button', { type: 'submit', class: 'primary', dataset: { action: 'add-model' } }, 'Add the model');
  const result = h('div', { class: 'result', 'aria-live': 'polite' });
  const form = h('form', { id: 'add-model-form', novalidate: true }, useYaml.wrap, formFields, more, yamlF.wrap, h('div', { class: 'row' }, submit), result);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    let recipe;
    if (useYaml.input.checked) {
      if (!yaml.value.trim()) { say(result, 'error', 'Paste the recipe first.'); return; }
      recipe = { yaml: yaml.value };
    } else {
      recipe = { key: key.value.trim(), name: name.value.trim(), runtime: { image: image.value.trim() }, mode: mode.value };
      if (kind.value === 'repo') {
        recipe.repo = repo.value.trim();
        if (revision.value.trim()) recipe.revision = revision.value.trim();
      } else {
        recipe.path = path.value.trim();
      }
      if (args.value.trim()) recipe.args = splitArgs(args.value);
      if (desc.value.trim()) recipe.description = desc.value.trim();
      if (size.value) recipe.size_gb = Number(size.value);
      if (ready.value) recipe.expected_ready_seconds = Math.round(Number(ready.value));
      const c = caps.filter((x) => x.input.checked).map((x) => x.input.value);
      if (c.length) recipe.capabilities = c;
      if (onDemand.input.checked) recipe.on_demand = true;
      const missing = [];
      if (!recipe.key) missing.push('the short id');
      if (!recipe.name) missing.push('the display name');
      if (kind.value === 'repo' && !recipe.repo) missing.push('the repository');
      if (kind.value === 'path' && !recipe.path) missing.push('the folder');
      if (!recipe.runtime.image) missing.push('the runtime image');
      if (missing.length) { say(result, 'error', `Please fill in ${missing.join(', ')}.`); return; }
    }
    busy(submit, 'Adding…', async () => {
      try {
        const res = await api('POST', '/api/models', recipe);
        say(result, 'ok', `Added "${res.key}". It is in the list above.`);
        form.reset();
        image.value = 'vllm-node';
        sync();
        loadModels();
      } catch (e2) {
        say(result, 'error', `Not added: ${e2.message}`);
      }
    });
  });
  fill(body, form);
}

export function initModels() {
  buildAddForm();
  $('#models-refresh').addEventListener('click', () => loadModels());
  $('#nav-models').addEventListener('click', () => modelsOpened());
}
