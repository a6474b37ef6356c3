// Spark Control dashboard: one live feed (GET /api/live, server-sent events) drives every view.
// `state` events carry the whole picture and re-render it; `log` events extend the event log.
// REST calls are made only for actions and for data not in the live state (models, keys,
// endpoints, the audit log). Everything from the API reaches the DOM as text, never as HTML.

import { h, $, fill } from './dom.js';
import { store, nodes, part, partError, rememberNames } from './store.js';
import { initConfirm, tickTimes, toast } from './ui.js';
import { updateHardware } from './hardware.js';
import { initSwap, updateSwap, tickSwap, setOnSwapDone } from './swap.js';
import { initModels, loadModels, updateModels } from './models.js';
import { updateServices, serviceState } from './services.js';
import { initEvents, addEvents, loadEvents, relabelEvents } from './events.js';
import { initNodes, updateNodes } from './nodes.js';
import { initSettings, updateSettings, loadEndpoints } from './settings.js';
import { get } from './api.js';

// ---------------------------------------------------------------------------------------------
// Theme: follows the system unless the user picks one (kept in localStorage).

const THEMES = ['auto', 'light', 'dark'];
function applyTheme(t) {
  if (t === 'auto') document.documentElement.removeAttribute('data-theme');
  else document.documentElement.setAttribute('data-theme', t);
  const b = $('#theme-toggle');
  b.textContent = `Theme: ${t}`;
  b.setAttribute('aria-label', `Colour theme: ${t === 'auto' ? 'automatic (follows the system)' : t}. Press to change.`);
}
function initTheme() {
  let t = 'auto';
  try { t = localStorage.getItem('spark-theme') || 'auto'; } catch { /* private mode */ }
  if (!THEMES.includes(t)) t = 'auto';
  applyTheme(t);
  $('#theme-toggle').addEventListener('click', () => {
    t = THEMES[(THEMES.indexOf(t) + 1) % THEMES.length];
    try { localStorage.setItem('spark-theme', t); } catch { /* ignore */ }
    applyTheme(t);
  });
}

// ---------------------------------------------------------------------------------------------
// The summary line at the top, for a glance.

function renderSummary() {
  const ns = nodes();
  const up = ns.filter((n) => n.connected).length;
  const status = part('status');
  const loaded = (status && status.loaded) || [];
  const services = part('services') || [];
  const enabled = services.filter((s) => s.enabled);
  const healthy = enabled.filter((s) => serviceState(s) === 'ok').length;
  const lock = part('lock');
  const job = status && status.active_job;
  const items = [];
  items.push(h('li', { class: up === ns.length && ns.length ? 'ok' : ns.length ? 'bad' : '' },
    h('a', { href: '#hardware' }, h('strong', null, `${up} of ${ns.length}`), ` ${ns.length === 1 ? 'box' : 'boxes'} online`)));
  items.push(h('li', { class: loaded.length ? 'ok' : '' },
    h('a', { href: '#swap' }, loaded.length ? ['Loaded: ', h('strong', null, loaded.map((l) => l.key).join(', '))] : 'No model loaded')));
  if (job) items.push(h('li', { class: 'warn' }, h('a', { href: '#swap' }, 'Switching to ', h('strong', null, job.model), ` (${job.phase})`)));
  if (enabled.length) {
    items.push(h('li', { class: healthy === enabled.length ? 'ok' : 'bad' },
      h('a', { href: '#services' }, h('strong', null, `${healthy} of ${enabled.length}`), ' services healthy')));
  }
  if (lock && lock.held) items.push(h('li', { class: 'warn' }, h('a', { href: '#swap' }, 'GPU reserved by ', h('strong', null, lock.holder))));
  const errs = ['hardware', 'services', 'status', 'lock', 'schedules', 'settings'].map((p) => partError(p)).filter(Boolean);
  if (errs.length) items.push(h('li', { class: 'bad' }, `Part of the picture is missing: ${errs[0].message}`));
  const sig = JSON.stringify(items.map((i) => [i.className, i.textContent]));
  const ul = $('#summary');
  if (ul.__sig !== sig) { ul.__sig = sig; fill(ul, items); }
}

// ---------------------------------------------------------------------------------------------
// Rendering a state

function render() {
  const steps = [updateHardware, updateSwap, updateModels, updateServices, updateNodes, updateSettings, renderSummary];
  for (const step of steps) {
    try {
      step();
    } catch (e) {
      // One view failing must not stop the others.
      console.error(`render ${step.name}:`, e);
    }
  }
}

let prevNames = '';
function onState(data) {
  let state;
  try { state = JSON.parse(data); } catch { return; }
  store.state = state;
  rememberNames();
  render();
  const names = JSON.stringify(nodes().map((n) => [n.id, n.name]));
  if (names !== prevNames) { prevNames = names; relabelEvents(); }
}

// ---------------------------------------------------------------------------------------------
// The live feed. EventSource reconnects by itself; a feed closed for good (an HTTP error) is
// reopened after a pause.

let live = null;
let everConnected = false;
let wasDown = false;
let reopenTimer = null;

function banner(text) {
  const b = $('#conn');
  document.body.classList.toggle('offline', !!text);
  if (!text) { b.hidden = true; return; }
  b.textContent = text;
  b.hidden = false;
}

function connect() {
  clearTimeout(reopenTimer);
  if (live) live.close();
  const es = new EventSource('/api/live');
  live = es;
  es.addEventListener('open', () => {
    banner(null);
    if (wasDown) {
      // Events written while we were away are not replayed by the feed: fetch them.
      loadEvents();
      loadModels();
      loadEndpoints();
      toast('Connected to the controller again.', 'ok');
    }
    wasDown = false;
    everConnected = true;
  });
  es.addEventListener('state', (e) => onState(e.data));
  es.addEventListener('log', (e) => {
    try { addEvents(JSON.parse(e.data)); } catch { /* ignore a bad row */ }
  });
  es.addEventListener('error', () => {
    wasDown = true;
    if (es.readyState === EventSource.CLOSED) {
      banner('Lost the connection to the controller. Reconnecting…');
      reopenTimer = setTimeout(connect, 3000);
    } else {
      banner(everConnected ? 'Lost the connection to the controller. Reconnecting…' : 'Connecting to the controller… reconnecting…');
    }
  });
}

async function version() {
  try {
    const v = await get('/api/version');
    $('#foot').textContent = `Spark Control ${v.version} · protocol ${v.protocol}`;
  } catch { /* optional */ }
}

function start() {
  initTheme();
  initConfirm();
  initSwap();
  initModels();
  initEvents();
  initNodes();
  initSettings();
  setOnSwapDone(() => { loadModels(); loadEndpoints(); });
  connect();
  loadEvents();
  loadModels('initial');
  version();
  setInterval(() => { tickTimes(); tickSwap(); }, 1000);
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
else start();
