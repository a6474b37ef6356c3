// The model switch ("swap") panel: follows the active or most recent job through its SSE stream
// (which replays from the start, so a reopened page re-attaches), shows what is loaded now,
// the swap lock and the registered schedules.

import { h, $, patch, setText, fill } from './dom.js';
import { dur, clock, ms } from './fmt.js';
import { api, get, seg } from './api.js';
import { confirmAction, toast, timeAgo, busy } from './ui.js';
import { part, partError, activeJob, store } from './store.js';

const STEPS = [
  ['preflight', 'Check'],
  ['stopping', 'Stop the old model'],
  ['starting', 'Start the new one'],
  ['loading', 'Load into memory'],
  ['ready', 'Ready'],
];
const PHASE_TEXT = {
  preflight: 'checking that the model can run here',
  stopping: 'stopping the model that was running',
  starting: 'starting the model server',
  loading: 'loading the model into memory — this is the long part',
  ready: 'ready: applications can use it now',
  failed: 'the switch failed',
};
const MAX_LOG = 1000;

let job = null; // the followed job: {id, model, status, phase, expected, timeout, base, baseAt, done, lastSeq, es, lines, wasRunning}
let onDone = () => {};
let lookedUpRecent = false;

export function setOnSwapDone(fn) { onDone = fn; }

function modelName(key) {
  const m = store.menu && store.menu.models && store.menu.models.find((x) => x.key === key);
  return m && m.name && m.name !== key ? `${m.name} (${key})` : key;
}

function buildSteps() {
  fill($('#swap-steps'), STEPS.map(([phase, label]) => h('li', { dataset: { phase } }, label)));
}

function renderSteps() {
  if (!job) return;
  const idx = STEPS.findIndex(([p]) => p === job.phase);
  const failedAt = job.phase === 'failed' ? STEPS.findIndex(([p]) => p === job.lastRealPhase) : -1;
  for (const li of $('#swap-steps').children) {
    const i = STEPS.findIndex(([p]) => p === li.dataset.phase);
    let cls = '';
    if (job.phase === 'failed') cls = i < failedAt ? 'done' : i === failedAt ? 'failed' : '';
    else if (i < idx || job.phase === 'ready') cls = 'done';
    else if (i === idx) cls = 'current';
    li.className = cls;
    if (cls === 'current') li.setAttribute('aria-current', 'step'); else li.removeAttribute('aria-current');
  }
}

function elapsed() {
  if (!job) return 0;
  if (job.finalElapsed != null) return job.finalElapsed;
  if (job.base == null) return 0;
  return job.base + (Date.now() - job.baseAt) / 1000;
}

function renderTime() {
  if (!job) return;
  const e = elapsed();
  const exp = job.expected;
  const prog = $('#swap-progress');
  const running = !job.done && job.status === 'running';
  let text;
  if (job.phase === 'ready') {
    text = `Ready after ${dur(e)}${exp ? ` (usually about ${dur(exp)})` : ''}.`;
    prog.value = 1;
  } else if (job.phase === 'failed') {
    text = `Stopped after ${dur(e)}.`;
    prog.value = exp ? Math.min(1, e / exp) : 0;
  } else if (running) {
    if (exp && e > exp) {
      text = `${dur(e)} so far — longer than the usual ${dur(exp)}${job.timeout ? `; it gives up after ${dur(job.timeout)}` : ''}.`;
    } else {
      text = `${dur(e)} so far${exp ? ` of about ${dur(exp)} expected` : ''}.`;
    }
    prog.value = exp ? Math.min(1, e / exp) : 0;
  } else {
    text = `${dur(e)}.`;
  }
  setText($('#swap-elapsed'), text);
}

function setPhase(phase, message) {
  if (!job) return;
  if (phase !== 'failed' && phase !== 'ready') job.lastRealPhase = phase;
  job.phase = phase;
  setText($('#swap-phase'), phase);
  setText($('#swap-message'), message ? `— ${message}` : PHASE_TEXT[phase] ? `— ${PHASE_TEXT[phase]}` : '');
  const status = phase === 'ready' ? 'ready' : phase === 'failed' ? 'failed' : 'running';
  setStatus(status);
  renderSteps();
  renderTime();
}

function setStatus(status) {
  job.status = status;
  const b = $('#swap-status');
  b.textContent = status === 'ready' ? 'done' : status === 'failed' ? 'failed' : 'in progress';
  b.className = `badge ${status === 'ready' ? 'ok' : status === 'failed' ? 'bad' : 'warn'}`;
  $('#swap-panel').classList.toggle('bad', status === 'failed');
}

function showError(message) {
  const box = $('#swap-error');
  if (!message) { box.hidden = true; box.textContent = ''; return; }
  box.hidden = false;
  box.textContent = message;
}

function addLog(node, stream, line) {
  const log = $('#swap-log');
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 30;
  log.append(h('div', { class: `log-line${stream === 'stderr' ? ' err' : ''}` },
    node ? h('span', { class: 'log-node' }, `${node} `) : null, line));
  while (log.children.length > MAX_LOG) log.firstChild.remove();
  job.lines += 1;
  setText($('#swap-log-count'), `(${job.lines} ${job.lines === 1 ? 'line' : 'lines'})`);
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function addCheck(c) {
  const ul = $('#swap-checks');
  ul.append(h('li', { class: c.ok ? 'ok' : 'bad', dataset: { check: c.name } },
    h('span', { class: 'check-mark', 'aria-hidden': 'true' }, c.ok ? '✓' : '✗'),
    h('span', { class: 'visually-hidden' }, c.ok ? 'passed: ' : 'failed: '),
    h('strong', null, c.name), c.node ? ` on ${c.node}` : '', ': ',
    h('span', { class: 'detail' }, c.detail || '')));
}

/** Start following a job (a job view as the API gives it). */
export function follow(view) {
  if (!view || !view.id) return;
  if (job && job.id === view.id) { refreshBase(view); return; }
  if (job && job.es) job.es.close();
  job = {
    id: view.id, model: view.model, status: view.status || 'running', phase: view.phase || 'preflight',
    lastRealPhase: 'preflight', expected: view.expected_ready_seconds, timeout: view.timeout_seconds,
    base: null, baseAt: 0, finalElapsed: null, done: false, lastSeq: 0, es: null, lines: 0,
    wasRunning: view.status === 'running',
  };
  refreshBase(view);
  $('#swap-empty').hidden = true;
  $('#swap-body').hidden = false;
  setText($('#swap-model'), view.model);
  $('#swap-model').title = modelName(view.model);
  fill($('#swap-when'), view.created_at ? ['· started ', timeAgo(view.created_at)] : []);
  fill($('#swap-checks'));
  fill($('#swap-log'));
  setText($('#swap-log-count'), '');
  showError(view.status === 'failed' ? view.error : null);
  buildSteps();
  setPhase(view.phase || 'preflight');
  const url = view.stream_url || `/api/swap/${seg(view.id)}/stream`;
  const es = new EventSource(url);
  job.es = es;
  const mine = job;
  const guard = (fn) => (e) => {
    if (job !== mine) return;
    let d;
    try { d = JSON.parse(e.data); } catch { return; }
    if (d.seq != null) {
      if (d.seq <= mine.lastSeq) return;
      mine.lastSeq = d.seq;
    }
    fn(d);
  };
  es.addEventListener('phase', guard((d) => setPhase(d.phase, d.message)));
  es.addEventListener('check', guard((d) => d.check && addCheck(d.check)));
  es.addEventListener('log', guard((d) => addLog(d.node, d.stream, d.line ?? '')));
  es.addEventListener('done', guard((d) => {
    mine.done = true;
    es.close();
    if (d.elapsed_seconds != null) mine.finalElapsed = d.elapsed_seconds;
    setPhase(d.phase || (d.error ? 'failed' : 'ready'));
    if (d.phase === 'failed' || d.error) {
      showError(d.error || 'The switch failed.');
      finishFailed(mine);
    } else {
      showError(null);
    }
    renderTime();
    if (mine.wasRunning) {
      toast(d.phase === 'ready' ? `${modelName(mine.model)} is ready.` : `Switching to ${mine.model} failed: ${d.error || 'see the log'}`, d.phase === 'ready' ? 'ok' : 'error');
      onDone(mine);
    }
  }));
  es.addEventListener('error', () => {
    if (mine.done || job !== mine) es.close();
  });
}

async function finishFailed(mine) {
  // The record holds the cause and the last log lines; show them if the stream gave no lines.
  try {
    const rec = await get(`/api/swap/${seg(mine.id)}`);
    if (job !== mine) return;
    if (rec.error) showError(rec.error);
    if (mine.lines === 0 && Array.isArray(rec.log_tail) && rec.log_tail.length) {
      for (const line of rec.log_tail) addLog(null, 'stdout', line);
    }
  } catch { /* the stream already said what it could */ }
}

function refreshBase(view) {
  if (!job) return;
  if (view.elapsed_seconds != null && !job.done) {
    job.base = view.elapsed_seconds;
    job.baseAt = Date.now();
  } else if (job.base == null && view.created_at) {
    job.base = Math.max(0, (Date.now() - ms(view.created_at)) / 1000);
    job.baseAt = Date.now();
  }
  if (view.status && view.status !== 'running' && view.elapsed_seconds != null) job.finalElapsed = view.elapsed_seconds;
  if (view.expected_ready_seconds) job.expected = view.expected_ready_seconds;
  if (view.timeout_seconds) job.timeout = view.timeout_seconds;
}

/** The swap running now (a job view), or null; a job whose stream already ended counts as over. */
export function runningSwap() {
  const active = activeJob();
  if (!active || (active.status && active.status !== 'running')) return null;
  if (job && job.id === active.id && job.done) return null;
  return active;
}

/** Every second: keep the elapsed time moving. */
export function tickSwap() {
  if (job && !job.done) renderTime();
}

async function lookUpRecent() {
  lookedUpRecent = true;
  try {
    const res = await get('/api/swap/jobs?limit=1');
    const list = Array.isArray(res) ? res : (res && res.jobs) || [];
    if (list.length && !job) follow(list[0]);
  } catch { /* nothing to show */ }
}

function renderLoaded() {
  const status = part('status');
  const err = partError('status');
  const loaded = (status && status.loaded) || [];
  patch($('#loaded-now'), { loaded, err, names: store.menu ? 1 : 0 }, () => {
    if (err) return h('p', { class: 'note error' }, `Cannot tell what is loaded: ${err.message}`);
    if (!status) return h('p', { class: 'muted' }, 'Waiting for the controller…');
    if (loaded.length === 0) {
      return h('p', { class: 'now-line' }, h('span', { class: 'badge' }, 'Nothing loaded'), ' ',
        'No language model is on the GPU. Chat apps will get an error until you switch one on below (or one loads on demand).');
    }
    return loaded.map((l) => {
      const ns = l.nodes || [];
      const allReady = ns.length > 0 && ns.every((n) => n.ready !== false && n.state === 'running');
      const anyNull = ns.some((n) => n.ready == null);
      const word = allReady && !anyNull ? 'ready' : ns.some((n) => n.state !== 'running') ? 'not running' : 'starting up';
      return h('p', { class: 'now-line', dataset: { loaded: l.key } },
        h('span', { class: `badge ${word === 'ready' ? 'ok' : word === 'not running' ? 'bad' : 'warn'}` }, word), ' ',
        h('strong', null, modelName(l.key)), ' on ',
        ns.map((n) => n.name).join(' + ') || 'no box');
    });
  });
}

function renderLock() {
  const lock = part('lock');
  const err = partError('lock');
  patch($('#lock-panel'), { lock: lock && { ...lock, expires_in_seconds: undefined }, err }, () => {
    if (err) return h('p', { class: 'note error' }, `Cannot read the GPU reservation: ${err.message}`);
    if (!lock) return null;
    if (!lock.held) return h('p', { class: 'muted' }, h('span', { class: 'badge ok' }, 'GPU free'), ' Nobody has reserved the GPU: anyone may switch models.');
    const btn = h('button', { type: 'button', class: 'small danger', dataset: { action: 'force-unlock' } }, 'Force release');
    btn.addEventListener('click', () => forceRelease(btn, lock.holder));
    return h('div', { class: 'lock held' },
      h('p', null, h('span', { class: 'badge warn' }, 'GPU reserved'), ' ',
        'Reserved by ', h('strong', { class: 'lock-holder' }, lock.holder), ' until ',
        h('strong', null, clock(lock.expires_at)), ' (', timeAgo(lock.expires_at), ')',
        '. Switching models is blocked for everyone else until then.'),
      lock.reason ? h('p', { class: 'muted' }, 'Reason: ', lock.reason) : null,
      lock.acquired_at ? h('p', { class: 'muted small-print' }, 'Taken ', timeAgo(lock.acquired_at), '.') : null,
      h('div', { class: 'row' }, btn, h('small', { class: 'help' }, 'Only if the holder is stuck: its job may fail.')));
  });
}

async function forceRelease(btn, holder) {
  const yes = await confirmAction(`Force-release the GPU reservation held by "${holder}"? Its job may then be disturbed by other switches.`, { yes: 'Release it' });
  if (!yes) return;
  await busy(btn, 'Releasing…', async () => {
    try {
      await api('DELETE', '/api/swap/lock?force=true');
      toast('The GPU reservation was released.', 'ok');
    } catch (e) {
      toast(`Could not release it: ${e.message}`, 'error');
    }
  });
}

function renderSchedules() {
  const list = part('schedules');
  const err = partError('schedules');
  patch($('#schedules'), { list, err }, () => {
    if (err) return h('p', { class: 'note error' }, `Cannot read the schedules: ${err.message}`);
    if (!list || list.length === 0) return h('p', { class: 'muted' }, 'None registered.');
    return h('div', { class: 'table-wrap' }, h('table', null,
      h('thead', null, h('tr', null, ['Name', 'When (UTC)', 'Next', 'Model', 'Owner', 'What'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', null, list.map((sc) => h('tr', { dataset: { schedule: sc.name } },
        h('td', null, sc.name),
        h('td', null, h('code', null, sc.cron)),
        h('td', null, sc.next_run ? [clock(sc.next_run), ' (', timeAgo(sc.next_run), ')'] : '–'),
        h('td', null, sc.model),
        h('td', null, sc.owner),
        h('td', null, sc.description || ''))))));
  });
}

export function updateSwap() {
  const active = activeJob();
  if (active) follow(active);
  else if (!job && !lookedUpRecent && store.state) lookUpRecent();
  renderLoaded();
  renderLock();
  renderSchedules();
}

export function initSwap() {
  $('#swap-body').hidden = true;
  buildSteps();
}
