// Services: a card per configured service from the live state, with its container, HTTP health,
// what it serves and its last deep probe; Start / Restart / Stop and "Probe now".

import { h, $, patch, setAttr } from './dom.js';
import { dur } from './fmt.js';
import { api, seg } from './api.js';
import { confirmAction, busy, say, timeAgo } from './ui.js';
import { part, partError } from './store.js';

const cards = new Map(); // name -> {el, r}

const KIND = {
  llm: 'Language model', asr: 'Speech to text', tts: 'Text to speech', embeddings: 'Embeddings (for search)',
  vector_store: 'Vector store (search index)', custom: 'Custom service',
};
const STATE_WORD = {
  ok: ['Healthy', 'ok'], down: ['Not answering', 'bad'], stopped: ['Stopped', 'bad'],
  disabled: ['Disabled', ''], unknown: ['Not checked yet', 'warn'],
};
const ACTIONS = {
  start: ['Start', 'Start'],
  restart: ['Restart', 'Restart'],
  stop: ['Stop', 'Stop'],
};

/** The test hook: disabled, stopped, down, ok or unknown (in that order). */
export function serviceState(svc) {
  if (!svc.enabled) return 'disabled';
  if (svc.container_state && svc.container_state.state !== 'running') return 'stopped';
  const st = svc.status;
  if (st && st.healthy === false) return 'down';
  if (st && st.healthy === true) return 'ok';
  return 'unknown';
}

function buildCard(svc) {
  const r = {};
  r.info = h('div', { class: 'service-info' });
  r.buttons = {};
  for (const [action, [label]] of Object.entries(ACTIONS)) {
    const b = h('button', { type: 'button', dataset: { action }, class: action === 'stop' ? 'danger-outline' : '' }, label);
    b.addEventListener('click', () => act(r, action, b));
    r.buttons[action] = b;
  }
  r.probe = h('button', { type: 'button', dataset: { action: 'probe' } }, 'Probe now');
  r.probe.addEventListener('click', () => probe(r));
  r.result = h('div', { class: 'result', 'aria-live': 'polite' });
  r.name = svc.name;
  const el = h('article', { class: 'card service', dataset: { service: svc.name, state: 'unknown' } },
    r.info,
    h('div', { class: 'actions' }, r.buttons.start, r.buttons.restart, r.buttons.stop, r.probe),
    r.result);
  return { el, r };
}

function renderInfo(card, svc, probeRow) {
  const state = serviceState(svc);
  setAttr(card.el, 'data-state', state);
  card.el.classList.toggle('bad', state === 'down' || state === 'stopped');
  const cs = svc.container_state;
  const st = svc.status || {};
  const lp = svc.last_probe || (probeRow && probeRow.last_probe) || null;
  const restarts = svc.restart_count ?? (probeRow && probeRow.restart_count) ?? 0;
  card.r.buttons.start.disabled = !svc.container;
  card.r.buttons.restart.disabled = !svc.container;
  card.r.buttons.stop.disabled = !svc.container;
  const sig = { svc: { ...svc, status: { ...st, latency_ms: undefined, checked_at: undefined } }, lp, restarts, state };
  patch(card.r.info, sig, () => {
    const [word, cls] = STATE_WORD[state];
    const out = [];
    out.push(h('header', { class: 'card-head' },
      h('h3', { class: 'service-name' }, svc.name),
      h('span', { class: `badge ${cls}` }, word)));
    out.push(h('p', { class: 'muted' }, KIND[svc.kind] || svc.kind, svc.api ? ` · ${svc.api} API` : ''));
    const dl = h('dl', { class: 'facts' });
    const fact = (k, ...v) => dl.append(h('dt', null, k), h('dd', null, ...v));
    if (svc.url) fact('Where', h('span', { class: 'mono' }, svc.url));
    else {
      const where = st.node_name || (svc.node && /^#\d+$/.test(svc.node) ? `box ${svc.node} (in joining order)` : svc.node) || '–';
      fact('Where', where, svc.port ? `, port ${svc.port}` : '');
    }
    if (svc.container) {
      if (cs) {
        const extra = [cs.status, cs.health && cs.health !== 'none' ? `health: ${cs.health}` : null,
          cs.oom_killed ? 'killed: out of memory' : null,
          cs.state !== 'running' && cs.exit_code != null ? `exit code ${cs.exit_code}` : null].filter(Boolean);
        fact('Container', h('span', { class: 'mono' }, svc.container), ' — ', h('strong', { class: 'container-state' }, cs.state),
          extra.length ? h('small', { class: 'muted' }, ` (${extra.join(', ')})`) : null);
      } else {
        fact('Container', h('span', { class: 'mono' }, svc.container), h('small', { class: 'muted' }, ' — not found on a connected box'));
      }
    }
    if (!svc.enabled) {
      fact('Health', 'not checked (disabled)');
    } else if (st.healthy === true) {
      fact('Health', h('span', { class: 'good' }, 'answering'), st.healthy_since ? [' since ', timeAgo(st.healthy_since)] : '');
    } else if (st.healthy === false) {
      fact('Health', h('span', { class: 'bad-text' }, 'not answering'), st.healthy_since ? [' since ', timeAgo(st.healthy_since)] : '',
        st.error ? h('small', { class: 'muted detail' }, ` — ${st.error}`) : null);
    } else {
      fact('Health', 'not checked yet');
    }
    const serves = [...(st.models || []), ...((st.voices || []).length ? [`${st.voices.length} voices`] : [])];
    fact('Serves', serves.length ? serves.join(', ') : svc.model || '–');
    if (lp) {
      const ok = lp.outcome === 'ok';
      fact('Deep check', h('span', { class: ok ? 'good' : lp.outcome === 'failed' ? 'bad-text' : '' }, lp.outcome),
        lp.at ? [' ', timeAgo(lp.at)] : '', lp.ms != null ? ` (${lp.ms} ms)` : '',
        lp.detail ? h('small', { class: 'muted detail' }, ` — ${lp.detail}`) : null,
        lp.wedge ? h('small', { class: 'detail' }, ` Stuck: ${lp.wedge}.`) : null,
        lp.action ? h('small', { class: 'detail' }, ` Action: ${lp.action}.`) : null);
    } else {
      fact('Deep check', 'none yet');
    }
    fact('Restarts', `${restarts} by Spark Control`, cs && cs.docker_restart_count ? `, ${cs.docker_restart_count} by Docker` : '');
    out.push(dl);
    return out;
  });
}

async function act(r, action, button) {
  const verb = { start: 'Start', restart: 'Restart', stop: 'Stop' }[action];
  const consequence = {
    start: 'It will start its container.',
    restart: 'Apps using it get errors for a moment while it restarts.',
    stop: 'Apps using it get errors until you start it again.',
  }[action];
  const yes = await confirmAction(`${verb} the ${r.name} service? ${consequence}`, { yes: verb, title: `${verb} a service`, danger: action !== 'start' });
  if (!yes) return;
  await busy(button, `${verb === 'Stop' ? 'Stopping' : verb === 'Start' ? 'Starting' : 'Restarting'}…`, async () => {
    try {
      const res = await api('POST', `/api/services/${seg(r.name)}/${action}`, {});
      const state = res && res.container_state ? ` The container is ${res.container_state.state}.` : '';
      say(r.result, 'ok', `${verb}: done.${state}`);
    } catch (e) {
      say(r.result, 'error', `${verb} failed: ${e.message}`);
    }
  });
}

async function probe(r) {
  await busy(r.probe, 'Probing…', async () => {
    try {
      const res = await api('POST', `/api/deep-health/${seg(r.name)}/run`, {});
      const kind = res.outcome === 'ok' ? 'ok' : res.outcome === 'failed' ? 'error' : 'info';
      say(r.result, kind, `Probe: ${res.outcome}${res.ms != null ? ` in ${res.ms} ms` : ''}${res.detail ? ` — ${res.detail}` : ''}${res.action ? ` (${res.action})` : ''}`);
    } catch (e) {
      say(r.result, 'error', `Probe failed to run: ${e.message}`);
    }
  });
}

let llmCard = null;
function renderLlmHealth(dh) {
  const row = dh && (dh.services || []).find((x) => x.service === 'llm');
  const box = $('#llm-health');
  if (!llmCard) {
    const result = h('div', { class: 'result', 'aria-live': 'polite' });
    const btn = h('button', { type: 'button', class: 'small', dataset: { action: 'probe-llm' } }, 'Probe now');
    const info = h('p');
    btn.addEventListener('click', () => probe({ name: 'llm', probe: btn, result }));
    box.replaceChildren(h('h3', null, 'Language model check'), info, h('div', { class: 'row' }, btn), result);
    llmCard = { info };
  }
  const lp = row && row.last_probe;
  patch(llmCard.info, lp, () => lp
    ? [h('strong', null, lp.outcome), ' ', lp.at ? timeAgo(lp.at) : '', lp.detail ? ` — ${lp.detail}` : '']
    : 'A one-word test message to the loaded model: not run yet. (No model loaded counts as idle, not as a failure.)');
}

export function updateServices() {
  const list = part('services');
  const err = partError('services');
  const dh = part('deep_health');
  const probes = new Map(((dh && dh.services) || []).map((x) => [x.service, x]));
  const box = $('#service-cards');
  if (err) {
    patch(box, err, () => h('p', { class: 'note error' }, `Cannot read the services: ${err.message}`));
    return;
  }
  if (box.__sig) { box.__sig = null; box.replaceChildren(); }
  const seen = new Set();
  (list || []).forEach((svc, i) => {
    seen.add(svc.name);
    let card = cards.get(svc.name);
    if (!card) { card = buildCard(svc); cards.set(svc.name, card); }
    if (box.children[i] !== card.el) box.insertBefore(card.el, box.children[i] || null);
    renderInfo(card, svc, probes.get(svc.name));
  });
  for (const [name, card] of cards) if (!seen.has(name)) { card.el.remove(); cards.delete(name); }

  const summary = $('#health-summary');
  if (dh) {
    const p = dh.policy || {};
    const text = `Deep checks run every ${dur(dh.interval_seconds)}${dh.next_round_at ? '' : ''}. ` +
      (p.auto_restart
        ? `A stuck service is restarted automatically — at most ${p.max_restarts} times in ${dur(p.window_seconds)}, ${dur(p.cooldown_seconds)} apart.`
        : 'Automatic restarts are off.');
    if (summary.textContent !== text) summary.textContent = text;
  }
  renderLlmHealth(dh);
}
