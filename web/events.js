// The event log: loaded from GET /api/events at start (and after a reconnect), then extended by
// the live feed's `log` events. Grouped by subject, newest first.

import { h, $, fill } from './dom.js';
import { clock, fullTime, ms } from './fmt.js';
import { get } from './api.js';
import { timeAgo } from './ui.js';
import { nodeName } from './store.js';

const MAX = 1000;
const PER_GROUP = 15;
const byId = new Map(); // id -> row
const expanded = new Set(); // subjects showing all rows
const collapsed = new Set(); // subjects folded by the user
let renderQueued = false;

const KIND_WORDS = {
  controller_started: 'controller started', token_created: 'join code made', node_enrolled: 'box joined',
  enroll_refused: 'join refused', node_connected: 'box connected', node_disconnected: 'box disconnected',
  node_refused: 'box refused', node_renamed: 'box renamed', node_revoked: 'box revoked', node_wake: 'wake-up sent',
  service_up: 'service up', service_down: 'service down', probe_failed: 'check failed', probe_recovered: 'check passes again',
  service_restarted: 'restarted automatically', service_restart_failed: 'automatic restart failed',
  swap_complete: 'switch done', swap_failed: 'switch failed', settings_changed: 'settings changed',
  model_deleted: 'files deleted', model_downloaded: 'download done', model_download_failed: 'download failed',
  model_download_started: 'download started',
};

function subjectLabel(subject) {
  if (!subject) return 'Controller and other';
  const i = subject.indexOf(':');
  const kind = i >= 0 ? subject.slice(0, i) : subject;
  const rest = i >= 0 ? subject.slice(i + 1) : '';
  if (kind === 'node') return `Box ${nodeName(rest)}`;
  if (kind === 'service') return `Service ${rest}`;
  if (kind === 'swap') return `Model ${rest}`;
  return subject;
}

function severity(kind) {
  if (/fail|down|refused|revoked|disconnected|error|expired/.test(kind)) return 'bad';
  if (/complete|up$|recovered|connected|enrolled|downloaded|_ok$/.test(kind)) return 'ok';
  return '';
}

/** Add rows (any order); duplicates by id are ignored. */
export function addEvents(rows) {
  if (!Array.isArray(rows)) return;
  let added = false;
  for (const r of rows) {
    if (r && r.id != null && !byId.has(r.id)) { byId.set(r.id, r); added = true; }
  }
  if (byId.size > MAX) {
    const ids = [...byId.keys()].sort((a, b) => a - b);
    for (const id of ids.slice(0, byId.size - MAX)) byId.delete(id);
  }
  if (added) queueRender();
}

export async function loadEvents() {
  try {
    addEvents(await get('/api/events?limit=200'));
  } catch (e) {
    if (byId.size === 0) fill($('#event-groups'), h('p', { class: 'note error' }, `Could not read the event log: ${e.message}`));
  }
}

function queueRender() {
  if (renderQueued) return;
  renderQueued = true;
  setTimeout(() => { renderQueued = false; render(); }, 30);
}

/** Names of nodes may change (rename): labels are re-derived on the next render. */
export function relabelEvents() {
  queueRender();
}

function render() {
  const rows = [...byId.values()].sort((a, b) => (ms(b.at) - ms(a.at)) || (b.id - a.id));
  const groups = new Map();
  for (const r of rows) {
    const k = r.subject || '';
    if (!groups.has(k)) groups.set(k, []);
    groups.get(k).push(r);
  }
  // The filter: keep the choice, list every subject.
  const sel = $('#events-filter');
  const chosen = sel.value;
  const subjects = [...groups.keys()];
  const sig = JSON.stringify(subjects.map((s) => [s, subjectLabel(s)]));
  if (sel.__sig !== sig) {
    sel.__sig = sig;
    fill(sel, h('option', { value: '' }, 'everything'),
      subjects.map((s) => h('option', { value: s || '(none)' }, subjectLabel(s))));
    sel.value = subjects.some((s) => (s || '(none)') === chosen) ? chosen : '';
  }
  const filter = sel.value;
  $('#events-count').textContent = `${rows.length} ${rows.length === 1 ? 'event' : 'events'}`;
  const out = [];
  for (const [subject, list] of groups) {
    const key = subject || '(none)';
    if (filter && filter !== key) continue;
    const all = expanded.has(key) || filter === key;
    const shown = all ? list : list.slice(0, PER_GROUP);
    const bad = severity(list[0].kind) === 'bad';
    const details = h('details', { class: `event-group${bad ? ' bad' : ''}`, dataset: { subject: key }, open: !collapsed.has(key) },
      h('summary', null, h('span', { class: 'group-name' }, subjectLabel(subject)), ' ',
        h('small', { class: 'muted' }, `${list.length} · latest `, timeAgo(list[0].at))),
      h('ol', { class: 'event-list' }, shown.map((r) => h('li', { class: `event ${severity(r.kind)}`, dataset: { id: r.id, kind: r.kind } },
        h('time', { class: 'ev-time', datetime: r.at, title: fullTime(r.at) }, clock(r.at)),
        h('span', { class: 'ev-kind' }, KIND_WORDS[r.kind] || r.kind.replace(/_/g, ' ')),
        h('span', { class: 'ev-msg' }, r.message, r.actor ? h('small', { class: 'muted' }, ` — by ${r.actor}`) : null)))),
      list.length > shown.length
        ? h('button', { type: 'button', class: 'small ghost', onclick: () => { expanded.add(key); render(); } }, `Show all ${list.length}`)
        : null);
    details.addEventListener('toggle', () => { if (details.open) collapsed.delete(key); else collapsed.add(key); });
    out.push(details);
  }
  const box = $('#event-groups');
  if (out.length === 0) fill(box, h('p', { class: 'empty' }, 'Nothing yet.'));
  else fill(box, out);
}

export function initEvents() {
  $('#events-filter').addEventListener('change', render);
}
