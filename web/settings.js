// Settings (from the live state; PUT sends only what changed), API keys, the endpoints card for
// applications, and the audit log.

import { h, $, fill, field, checkbox } from './dom.js';
import { binSize } from './fmt.js';
import { api, get, seg } from './api.js';
import { confirmAction, toast, busy, say, note, copyText, copyButton, timeAgo } from './ui.js';
import { part, partError } from './store.js';

// Known settings, in plain words. Anything the API adds later is shown under "Other".
const GROUPS = [
  ['Applications', [
    { path: 'api_keys_required', type: 'bool', label: 'Applications need an API key', help: 'When on, every app must send one of the keys made below.' },
    { path: 'on_demand_wait_seconds', type: 'int', nullable: true, label: 'How long a request waits for a model to load (seconds)', help: 'Empty: the default (120 s).' },
  ]],
  ['Health checks', [
    { path: 'health.probe_interval_seconds', type: 'int', label: 'Deep check every (seconds)', help: 'Between 5 and 86400.' },
    { path: 'health.probe_timeout_seconds', type: 'int', label: 'A check fails after (seconds)' },
    { path: 'health.auto_restart', type: 'bool', label: 'Restart a stuck service automatically' },
    { path: 'health.max_restarts', type: 'int', label: 'At most this many automatic restarts…' },
    { path: 'health.window_seconds', type: 'int', label: '…within this many seconds' },
    { path: 'health.cooldown_seconds', type: 'int', label: 'Wait at least (seconds) between restarts' },
    { path: 'health.grace_seconds', type: 'int', label: 'Leave a starting service alone for (seconds)' },
  ]],
  ['Request size limits (bytes)', [
    { path: 'limits.llm_json_bytes', type: 'bytes', label: 'Chat requests (images travel inside)' },
    { path: 'limits.json_bytes', type: 'bytes', label: 'Embeddings, rerank, search, speech requests' },
    { path: 'limits.audio_bytes', type: 'bytes', label: 'Audio uploads for transcription' },
  ]],
  ['Hybrid search', [
    { path: 'search.embeddings_service', type: 'text', label: 'Embeddings service' },
    { path: 'search.vector_store_service', type: 'text', label: 'Vector store service' },
    { path: 'search.sparse', type: 'sparse', label: 'Sparse encoder' },
    { path: 'search.dense_vector', type: 'text', label: 'Name of the dense vector' },
    { path: 'search.sparse_vector', type: 'text', label: 'Name of the sparse vector' },
    { path: 'search.prefetch_limit', type: 'int', label: 'Candidates per list before fusion' },
  ]],
  ['Secrets (never shown again once saved)', [
    { path: 'secrets.huggingface_token', type: 'secret', label: 'Hugging Face token', help: 'Used for downloads of gated models.' },
    { path: 'secrets.ngc_api_key', type: 'secret', label: 'NVIDIA NGC API key' },
  ]],
];

let original = null; // the settings document the form shows
let controls = []; // {def, read(): value | undefined (unchanged), write(doc), el}
let dirty = false;
let pendingDoc = null; // settings changed elsewhere while the user edits

const getPath = (obj, path) => path.split('.').reduce((o, k) => (o == null ? undefined : o[k]), obj);
function setPath(obj, path, value) {
  const keys = path.split('.');
  let o = obj;
  for (const k of keys.slice(0, -1)) { if (o[k] == null || typeof o[k] !== 'object') o[k] = {}; o = o[k]; }
  o[keys[keys.length - 1]] = value;
}

function leafPaths(obj, prefix = '') {
  const out = [];
  for (const [k, v] of Object.entries(obj || {})) {
    const p = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === 'object' && !Array.isArray(v) && p !== 'search.sparse') out.push(...leafPaths(v, p));
    else out.push(p);
  }
  return out;
}

function inferType(v) {
  if (typeof v === 'boolean') return 'bool';
  if (typeof v === 'number') return Number.isInteger(v) ? 'int' : 'num';
  if (v && typeof v === 'object') return 'json';
  return 'text';
}

function makeControl(def) {
  const id = `set-${def.path.replace(/\./g, '-')}`;
  const mark = () => { dirty = true; $('#settings-status').textContent = 'Unsaved changes.'; };
  if (def.type === 'bool') {
    const c = checkbox(def.label, { id, dataset: { setting: def.path } });
    c.input.addEventListener('change', mark);
    const wrap = def.help ? h('div', null, c.wrap, h('small', { class: 'help' }, def.help)) : c.wrap;
    return {
      def, el: wrap, input: c.input,
      write(doc) { c.input.checked = !!getPath(doc, def.path); },
      read(doc) { const v = c.input.checked; return v === !!getPath(doc, def.path) ? undefined : v; },
    };
  }
  if (def.type === 'secret') {
    const input = h('input', { type: 'password', id, autocomplete: 'new-password', dataset: { setting: def.path } });
    const clear = checkbox('Remove the stored value', { id: `${id}-clear` });
    const state = h('small', { class: 'help' });
    input.addEventListener('input', mark);
    clear.input.addEventListener('change', mark);
    const f = field(def.label, input, def.help);
    return {
      def, el: h('div', null, f.wrap, state, clear.wrap), input,
      write(doc) {
        const v = getPath(doc, def.path);
        input.value = '';
        clear.input.checked = false;
        input.placeholder = v ? 'stored (hidden) — type to replace' : 'not set';
        state.textContent = v ? 'A value is stored.' : 'Not set.';
        clear.wrap.hidden = !v;
      },
      read() {
        if (clear.input.checked) return null;
        return input.value ? input.value : undefined;
      },
    };
  }
  if (def.type === 'sparse') {
    const kind = h('select', { id, dataset: { setting: def.path } },
      h('option', { value: 'none' }, 'none (dense search only)'),
      h('option', { value: 'tei-service' }, 'a TEI server configured as a service'),
      h('option', { value: 'tei-url' }, 'a TEI-compatible server at a URL'));
    const svc = h('input', { type: 'text', id: `${id}-service`, autocomplete: 'off', spellcheck: 'false' });
    const url = h('input', { type: 'text', id: `${id}-url`, autocomplete: 'off', spellcheck: 'false', placeholder: 'http://host:port' });
    const fSvc = field('Service name', svc);
    const fUrl = field('URL', url);
    const sync = () => { fSvc.wrap.hidden = kind.value !== 'tei-service'; fUrl.wrap.hidden = kind.value !== 'tei-url'; };
    kind.addEventListener('change', () => { sync(); mark(); });
    svc.addEventListener('input', mark);
    url.addEventListener('input', mark);
    const desired = () => {
      if (kind.value === 'none') return { kind: 'none' };
      if (kind.value === 'tei-url') return { kind: 'tei', service: null, url: url.value.trim() };
      return { kind: 'tei', service: svc.value.trim(), url: null };
    };
    return {
      def, el: h('div', { class: 'sparse' }, field(def.label, kind, 'Where sparse (keyword-like) query vectors come from.').wrap, fSvc.wrap, fUrl.wrap), input: kind,
      write(doc) {
        const v = getPath(doc, def.path) || { kind: 'none' };
        kind.value = v.kind === 'none' ? 'none' : v.url ? 'tei-url' : 'tei-service';
        svc.value = v.service || '';
        url.value = v.url || '';
        sync();
      },
      read(doc) {
        const v = getPath(doc, def.path) || {};
        const d = desired();
        const same = d.kind === v.kind && (d.kind === 'none' || ((d.service || null) === (v.service || null) && (d.url || null) === (v.url || null)));
        return same ? undefined : d;
      },
    };
  }
  const isNum = def.type === 'int' || def.type === 'num' || def.type === 'bytes';
  const input = def.type === 'json'
    ? h('textarea', { id, rows: 2, spellcheck: 'false', dataset: { setting: def.path } })
    : h('input', { type: isNum ? 'number' : 'text', id, step: def.type === 'num' ? 'any' : isNum ? 1 : null, inputmode: isNum ? 'numeric' : null, autocomplete: 'off', spellcheck: 'false', dataset: { setting: def.path } });
  const hint = h('span');
  const helpText = def.type === 'bytes' ? hint : def.help;
  const f = field(def.label, input, helpText);
  const updateHint = () => { if (def.type === 'bytes') hint.textContent = input.value ? `= ${binSize(Number(input.value))}` : ''; };
  input.addEventListener('input', () => { updateHint(); mark(); });
  const parse = () => {
    const raw = input.value.trim();
    if (def.type === 'json') { try { return JSON.parse(raw); } catch { return raw; } }
    if (raw === '') return def.nullable ? null : undefined;
    if (isNum) return Number(raw);
    return raw;
  };
  return {
    def, el: f.wrap, input,
    write(doc) {
      const v = getPath(doc, def.path);
      input.value = v == null ? '' : def.type === 'json' ? JSON.stringify(v) : String(v);
      updateHint();
    },
    read(doc) {
      const v = parse();
      if (v === undefined) return undefined;
      const cur = getPath(doc, def.path);
      return JSON.stringify(v) === JSON.stringify(cur ?? null) ? undefined : v;
    },
  };
}

function buildForm(doc) {
  controls = [];
  const known = new Set();
  const sections = [];
  for (const [title, defs] of GROUPS) {
    const present = defs.filter((d) => getPath(doc, d.path) !== undefined || d.type === 'secret' || d.nullable);
    if (present.length === 0) continue;
    const cs = present.map((d) => { known.add(d.path); const c = makeControl(d); controls.push(c); return c; });
    sections.push(h('fieldset', null, h('legend', null, title), h('div', { class: 'grid2' }, cs.map((c) => c.el))));
  }
  const other = leafPaths(doc).filter((p) => !known.has(p) && !p.startsWith('secrets.'));
  if (other.length) {
    const cs = other.map((p) => { const c = makeControl({ path: p, type: inferType(getPath(doc, p)), label: p, nullable: getPath(doc, p) === null }); controls.push(c); return c; });
    sections.push(h('fieldset', null, h('legend', null, 'Other'), h('div', { class: 'grid2' }, cs.map((c) => c.el))));
  }
  fill($('#settings-fields'), sections);
  for (const c of controls) c.write(doc);
}

function showSettingsError(message) {
  const box = $('#settings-error');
  for (const c of controls) c.input.removeAttribute('aria-invalid');
  if (!message) { box.hidden = true; box.textContent = ''; return; }
  box.hidden = false;
  box.textContent = message;
  // The API's message starts with the field's path: point at it.
  const m = /^([a-z_][a-z0-9_.]*)\s*:/i.exec(message);
  if (m) {
    const c = controls.find((x) => m[1] === x.def.path || m[1].startsWith(`${x.def.path}.`));
    if (c) { c.input.setAttribute('aria-invalid', 'true'); c.input.focus(); }
  }
}

async function save(e) {
  e.preventDefault();
  if (!original) return;
  const patchDoc = {};
  const changed = [];
  for (const c of controls) {
    const v = c.read(original);
    if (v !== undefined) { setPath(patchDoc, c.def.path, v); changed.push(c.def.label); }
  }
  if (changed.length === 0) { $('#settings-status').textContent = 'Nothing changed.'; return; }
  await busy($('#settings-save'), 'Saving…', async () => {
    try {
      const res = await api('PUT', '/api/settings', patchDoc);
      showSettingsError(null);
      dirty = false;
      if (res && typeof res === 'object' && !res.error) { original = res; buildForm(res); }
      $('#settings-status').textContent = `Saved: ${changed.join('; ')}.`;
      toast('Settings saved and applied.', 'ok');
      loadEndpoints();
      loadKeys();
    } catch (err) {
      showSettingsError(err.message);
      $('#settings-status').textContent = 'Not saved.';
    }
  });
}

export function updateSettings() {
  const doc = part('settings');
  const err = partError('settings');
  if (err && !original) { fill($('#settings-fields'), note('error', `Cannot read the settings: ${err.message}`)); return; }
  if (!doc) return;
  const sig = JSON.stringify(doc);
  if (original && JSON.stringify(original) === sig) return;
  if (!original || !dirty) {
    const active = document.activeElement;
    const activeId = active && active.id;
    original = doc;
    buildForm(doc);
    if (activeId && $(`#${CSS.escape(activeId)}`)) $(`#${CSS.escape(activeId)}`).focus();
  } else {
    $('#settings-status').textContent = 'The settings were changed elsewhere; "Undo my edits" shows the new values.';
    pendingDoc = doc;
  }
}

// ---------------------------------------------------------------------------------------------
// API keys

let keysInfo = null;

async function loadKeys() {
  const body = $('#keys-body');
  try {
    keysInfo = await get('/api/keys');
    renderKeys();
  } catch (e) {
    fill(body, note('error', `Could not read the keys: ${e.message}`));
  }
}

function renderKeys(newKey) {
  const body = $('#keys-body');
  const info = keysInfo || { keys: [], endpoints: [], required: false };
  const out = [];
  const live = part('settings');
  const required = live && typeof live.api_keys_required === 'boolean' ? live.api_keys_required : info.required;
  out.push(h('p', { class: 'muted' }, required
    ? 'Keys are required now: apps must send "Authorization: Bearer <key>".'
    : 'Keys are not required now (see "Applications need an API key" above); a key still names the app in the audit log.'));
  if (newKey) {
    const code = h('code', { id: 'new-key', class: 'token', tabindex: '0' }, newKey.key);
    out.push(h('div', { class: 'note ok', role: 'status' },
      h('p', null, h('strong', null, `Key "${newKey.name}" made. Copy it now: it is shown only this once.`)),
      h('div', { class: 'copyline' }, code, h('button', { type: 'button', class: 'small', onclick: () => copyText(newKey.key, code) }, 'Copy'))));
  }
  if (info.keys.length) {
    out.push(h('ul', { class: 'key-list' }, info.keys.map((k) => {
      const del = h('button', { type: 'button', class: 'small danger-outline', dataset: { action: 'delete-key' } }, 'Revoke');
      const result = h('div', { class: 'result', 'aria-live': 'polite' });
      del.addEventListener('click', async () => {
        const yes = await confirmAction(`Revoke the key "${k.name}"? Apps using it are refused at once.`, { yes: 'Revoke key', title: 'Revoke an API key' });
        if (!yes) return;
        await busy(del, 'Revoking…', async () => {
          try {
            await api('DELETE', `/api/keys/${seg(k.id)}`);
            toast(`Key "${k.name}" revoked.`, 'ok');
            await loadKeys();
          } catch (e) {
            say(result, 'error', `Not revoked: ${e.message}`);
          }
        });
      });
      return h('li', { dataset: { keyId: k.id } },
        h('div', null, h('strong', null, k.name), ' ', h('code', null, `${k.prefix}…`)),
        h('small', { class: 'muted' }, (k.endpoints && k.endpoints.length ? `only ${k.endpoints.join(', ')}` : 'every endpoint'),
          ' · made ', timeAgo(k.created_at), k.created_by ? ` by ${k.created_by}` : ''),
        del, result);
    })));
  } else {
    out.push(h('p', { class: 'muted' }, 'No keys yet.'));
  }
  // New key form
  const name = h('input', { type: 'text', id: 'key-name', autocomplete: 'off', placeholder: 'meeting-recapper', maxlength: 128 });
  const eps = (info.endpoints || []).map((ep) => checkbox(ep, { value: ep, dataset: { endpoint: ep } }));
  const submit = h('button', { type: 'submit', class: 'primary', dataset: { action: 'create-key' } }, 'Make a key');
  const result = h('div', { class: 'result', 'aria-live': 'polite' });
  const form = h('form', { class: 'key-form', novalidate: true },
    h('h4', null, 'New key'),
    field('Which app is it for?', name).wrap,
    eps.length ? h('details', null, h('summary', null, 'Limit it to some endpoints (optional)'),
      h('fieldset', null, h('legend', { class: 'visually-hidden' }, 'Endpoints'), h('div', { class: 'grid2' }, eps.map((c) => c.wrap)))) : null,
    h('div', { class: 'row' }, submit), result);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const n = name.value.trim();
    if (!n) { say(result, 'error', 'Give the key a name (the app that will use it).'); return; }
    const chosen = eps.filter((c) => c.input.checked).map((c) => c.input.value);
    const reqBody = { name: n };
    if (chosen.length) reqBody.endpoints = chosen;
    busy(submit, 'Making…', async () => {
      try {
        const res = await api('POST', '/api/keys', reqBody);
        keysInfo = await get('/api/keys').catch(() => keysInfo);
        renderKeys({ name: res.name || n, key: res.key });
        const k = $('#new-key');
        if (k) k.focus();
      } catch (err) {
        say(result, 'error', `No key made: ${err.message}`);
      }
    });
  });
  out.push(form);
  fill(body, out);
}

// ---------------------------------------------------------------------------------------------
// Endpoints for applications

export async function loadEndpoints() {
  const body = $('#endpoints-body');
  let ep;
  try {
    ep = await get('/api/endpoints');
  } catch (e) {
    fill(body, note('error', `Could not read the endpoints: ${e.message}`));
    return;
  }
  const rows = [];
  const ready = (x) => (x && x.ready ? h('span', { class: 'badge ok' }, 'ready') : h('span', { class: 'badge bad' }, 'not ready'));
  const row = (what, x, model) => rows.push(h('tr', null, h('th', { scope: 'row' }, what), h('td', null, ready(x)), h('td', null, model || '–'),
    h('td', null, x && x.error ? h('small', { class: 'muted' }, x.error) : '')));
  const llm = ep.llm || {};
  row('Chat (LLM)', llm, llm.model || (llm.loading ? `loading ${llm.loading}` : null));
  if (ep.stt) row('Speech to text', ep.stt, ep.stt.model);
  if (ep.tts) row('Text to speech', ep.tts, ep.tts.model || (ep.tts.voices && ep.tts.voices.length ? `${ep.tts.voices.length} voices` : null));
  if (ep.embeddings) row('Embeddings', ep.embeddings, ep.embeddings.model);
  if (ep.rerank) row('Rerank', ep.rerank, ep.rerank.model);
  if (ep.search) row('Hybrid search', ep.search, ep.search.vector_store && ep.search.vector_store.service);
  const base = ep.openai_base_url || `${ep.base_url}/v1`;
  const model = llm.model || 'MODEL';
  const lines = [`curl ${ep.llm && ep.llm.chat_completions ? ep.llm.chat_completions : `${base}/chat/completions`} \\`,
    "  -H 'Content-Type: application/json' \\"];
  if (ep.api_key_required) lines.push('  -H "Authorization: Bearer $SPARK_API_KEY" \\');
  lines.push(`  -d '${JSON.stringify({ model, messages: [{ role: 'user', content: 'Say hi' }], max_tokens: 20 }).replace(/'/g, "'\\''")}'`);
  const curl = h('pre', { class: 'commands', id: 'curl-example', tabindex: '0' }, lines.join('\n'));
  const baseCode = h('code', { id: 'base-url' }, base);
  const refresh = h('button', { type: 'button', class: 'small ghost' }, 'Refresh');
  refresh.addEventListener('click', () => busy(refresh, 'Refreshing…', loadEndpoints));
  fill(body,
    h('p', null, 'Point any OpenAI-compatible app at this address (base URL):'),
    h('div', { class: 'copyline' }, baseCode, copyButton(baseCode)),
    h('p', { class: 'muted' }, ep.api_key_required ? 'An API key is required: make one below.' : 'No API key is needed now (any value works as the key).'),
    h('div', { class: 'table-wrap' }, h('table', { class: 'endpoints' },
      h('thead', null, h('tr', null, ['What', 'Now', 'Model', ''].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', null, rows))),
    h('p', null, 'Try it from a terminal:'),
    h('div', { class: 'copyline' }, curl, copyButton(curl)),
    h('p', { class: 'muted small-print' }, 'Full map for apps that configure themselves: ', h('code', null, `${ep.base_url}/api/endpoints`), '.'),
    h('div', { class: 'row' }, refresh));
}

// ---------------------------------------------------------------------------------------------
// Audit log

async function loadAudit() {
  const body = $('#audit-body');
  fill(body, h('p', { class: 'muted' }, 'Loading…'));
  try {
    const rows = await get('/api/audit?limit=200');
    const refresh = h('button', { type: 'button', class: 'small ghost' }, 'Refresh');
    refresh.addEventListener('click', loadAudit);
    fill(body,
      rows.length === 0 ? h('p', { class: 'muted' }, 'Nothing recorded yet.') : h('div', { class: 'table-wrap' }, h('table', null,
        h('thead', null, h('tr', null, ['When', 'Who', 'Did', 'On', 'Result'].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', null, rows.map((r) => h('tr', { class: r.status >= 400 ? 'bad-row' : '' },
          h('td', null, timeAgo(r.at)), h('td', null, r.actor), h('td', null, r.action),
          h('td', { class: 'mono' }, r.target), h('td', null, `${r.status ?? ''} ${r.result || ''}`.trim())))))),
      h('div', { class: 'row' }, refresh));
  } catch (e) {
    fill(body, note('error', `Could not read the audit log: ${e.message}`));
  }
}

export function initSettings() {
  $('#settings-form').addEventListener('submit', save);
  $('#settings-reset').addEventListener('click', () => {
    const doc = pendingDoc || original;
    if (!doc) return;
    pendingDoc = null;
    original = doc;
    dirty = false;
    buildForm(doc);
    showSettingsError(null);
    $('#settings-status').textContent = 'Edits undone.';
  });
  $('#audit').addEventListener('toggle', () => { if ($('#audit').open) loadAudit(); });
  loadKeys();
  loadEndpoints();
}

