// Boxes: one card per node, updated in place from every live state. Sparklines come from a
// client-side history of the telemetry the states carry (one sample per telemetry update).

import { h, s, $, patch, setText, setAttr } from './dom.js';
import { gb, pct, dur, ms } from './fmt.js';
import { api, seg } from './api.js';
import { busy, say, timeAgo } from './ui.js';
import { nodes, part, macsOf } from './store.js';

const WINDOW_MS = 5 * 60 * 1000;
const cards = new Map(); // node id -> {el, r}
const history = new Map(); // node id -> {last, samples: [{t, util, temp, power, cpu, mem}]}

function sparkline(what) {
  const svg = s('svg', { class: 'spark', viewBox: '0 0 100 32', preserveAspectRatio: 'none', role: 'img', 'aria-label': `${what}: no readings yet` });
  const area = s('path', { class: 'spark-area' });
  const line = s('polyline', { class: 'spark-line', fill: 'none', 'vector-effect': 'non-scaling-stroke' });
  svg.append(area, line);
  return {
    svg,
    update(samples, key, max, unit, now) {
      const pts = samples.filter((p) => p[key] != null);
      if (pts.length === 0) {
        line.setAttribute('points', '');
        area.setAttribute('d', '');
        setAttr(svg, 'aria-label', `${what}: no readings`);
        return;
      }
      const top = Math.max(max || 0, ...pts.map((p) => p[key])) || 1;
      // The x axis spans the history we have (at least a minute, at most the window).
      const win = Math.min(WINDOW_MS, Math.max(60000, now - pts[0].t));
      const xy = pts.map((p) => {
        const x = Math.max(0, 100 - ((now - p.t) / win) * 100);
        const y = 31 - (p[key] / top) * 29;
        return [x.toFixed(2), y.toFixed(2)];
      });
      if (xy.length === 1) xy.unshift([Math.max(0, Number(xy[0][0]) - 1).toFixed(2), xy[0][1]]);
      line.setAttribute('points', xy.map((p) => p.join(',')).join(' '));
      area.setAttribute('d', `M${xy[0][0]},32 L${xy.map((p) => p.join(',')).join(' L')} L${xy[xy.length - 1][0]},32 Z`);
      const vals = pts.map((p) => p[key]);
      const last = vals[vals.length - 1];
      const peak = Math.max(...vals);
      setAttr(svg, 'aria-label', `${what} over the last ${win >= 120000 ? `${Math.round(win / 60000)} minutes` : 'minute'}: now ${Math.round(last)}${unit}, highest ${Math.round(peak)}${unit}`);
    },
  };
}

function metric(label, sparkWhat) {
  const value = h('span', { class: 'metric-value' }, '–');
  const sub = h('small', { class: 'metric-sub' });
  const spark = sparkWhat ? sparkline(sparkWhat) : null;
  const bar = h('span', { class: 'bar', hidden: true }, h('span', { class: 'bar-fill' }));
  const el = h('div', { class: 'metric' }, h('span', { class: 'metric-label' }, label), value, bar, spark && spark.svg, sub);
  return {
    el, value, sub, spark, bar,
    setBar(frac) {
      if (frac == null || !Number.isFinite(frac)) { bar.hidden = true; return; }
      bar.hidden = false;
      const f = Math.max(0, Math.min(1, frac));
      bar.firstChild.style.width = `${(f * 100).toFixed(1)}%`;
      bar.classList.toggle('high', f > 0.9);
      bar.classList.toggle('mid', f > 0.75 && f <= 0.9);
    },
  };
}

function buildCard(node) {
  const r = {};
  r.name = h('h3', { class: 'node-name' });
  r.badge = h('span', { class: 'badge' });
  r.vpn = h('span', { class: 'badge vpn', title: 'This box has a WireGuard VPN interface', hidden: true }, 'VPN');
  r.host = h('p', { class: 'muted host-line' });

  r.downText = h('p', { class: 'down-text' });
  r.wake = h('button', { type: 'button', class: 'primary', dataset: { action: 'wake' } }, 'Wake');
  r.wakeHelp = h('small', { class: 'help' }, 'Sends a Wake-on-LAN signal so the box powers on.');
  r.wakeResult = h('div', { class: 'result', 'aria-live': 'polite' });
  r.down = h('div', { class: 'down-info' }, r.downText, h('div', { class: 'row' }, r.wake, r.wakeHelp), r.wakeResult);
  r.wake.addEventListener('click', () => wake(r));

  r.gpuName = h('p', { class: 'gpu-name' });
  r.mUtil = metric('GPU busy', 'GPU busy');
  r.mTemp = metric('GPU temperature', 'GPU temperature');
  r.mPower = metric('GPU power', 'GPU power');
  r.mCpu = metric('CPU', 'CPU use');
  r.mMem = metric('Memory', 'Memory in use');
  r.mGpuMem = metric('GPU memory', null);
  r.unified = h('p', { class: 'unified', hidden: true });
  r.store = h('div', { class: 'store' });
  r.procs = h('div', { class: 'procs' });
  r.containers = h('div', { class: 'containers' });
  r.nics = h('div', { class: 'nics' });
  r.gpuNote = h('p', { class: 'muted gpu-note', hidden: true });

  r.live = h('div', { class: 'node-live' },
    r.gpuName, r.gpuNote,
    h('div', { class: 'metrics' }, r.mUtil.el, r.mTemp.el, r.mPower.el, r.mCpu.el, r.mMem.el, r.mGpuMem.el),
    r.unified, r.store, r.procs, r.containers, r.nics);

  const el = h('article', { class: 'card node', dataset: { node: node.name, nodeId: node.id, state: 'down' } },
    h('header', { class: 'card-head' }, r.name, h('span', { class: 'badges' }, r.badge, r.vpn)),
    r.host, r.down, r.live);
  r.nodeId = node.id;
  return { el, r };
}

async function wake(r) {
  await busy(r.wake, 'Sending…', async () => {
    try {
      const res = await api('POST', `/api/nodes/${seg(r.nodeId)}/wake`, {});
      say(r.wakeResult, 'ok', `Wake-up signal sent to ${res.mac} by ${res.sent_by}. A box usually comes back within a minute or two; this card turns green when it does.`);
    } catch (e) {
      say(r.wakeResult, 'error', `Could not wake it: ${e.message}`);
    }
  });
}

function sample(id, hw) {
  let hist = history.get(id);
  if (!hist) { hist = { last: null, samples: [] }; history.set(id, hist); }
  if (!hw || !hw.host || !hw.updated_at || hist.last === hw.updated_at) return hist;
  hist.last = hw.updated_at;
  const devs = (hw.gpu && hw.gpu.devices) || [];
  const nums = (f) => devs.map(f).filter((v) => v != null && Number.isFinite(v));
  const utils = nums((d) => d.utilization_pct);
  const temps = nums((d) => d.temperature_c);
  const powers = nums((d) => d.power_watts);
  const host = hw.host;
  const t = ms(hw.updated_at) || Date.now();
  hist.samples.push({
    t,
    util: utils.length ? utils.reduce((a, b) => a + b, 0) / utils.length : null,
    temp: temps.length ? Math.max(...temps) : null,
    power: powers.length ? powers.reduce((a, b) => a + b, 0) : null,
    cpu: host.cpu_usage_pct,
    mem: host.mem_total_bytes ? ((host.mem_total_bytes - host.mem_available_bytes) / host.mem_total_bytes) * 100 : null,
  });
  while (hist.samples.length && hist.samples[0].t < t - WINDOW_MS) hist.samples.shift();
  return hist;
}

function containerName(containers, id) {
  if (!id) return null;
  const c = (containers || []).find((x) => x.id && (id.startsWith(x.id) || x.id.startsWith(id)));
  return c ? c.name : null;
}

const STATE_WORDS = {
  running: 'running', exited: 'stopped', created: 'created, not started', paused: 'paused',
  restarting: 'restarting', removing: 'being removed', dead: 'dead',
};

function renderContainers(node) {
  const list = node.containers;
  const docker = node.docker;
  const items = [];
  items.push(h('h4', null, 'Containers'));
  if (docker && docker.available === false) {
    items.push(h('p', { class: 'muted' }, `Docker is not reachable on this box: ${docker.message || 'no reason given'}`));
  }
  if (list == null) {
    if (!docker) items.push(h('p', { class: 'muted' }, node.connected ? 'Waiting for the container list…' : 'Unknown while the box is offline.'));
    return items;
  }
  if (list.length === 0) {
    if (!docker || docker.available !== false) items.push(h('p', { class: 'muted' }, 'No containers.'));
    return items;
  }
  const ul = h('ul', { class: 'container-list' });
  for (const c of [...list].sort((a, b) => a.name.localeCompare(b.name))) {
    const ok = c.state === 'running';
    ul.append(h('li', { dataset: { container: c.name, state: c.state }, class: ok ? 'ok' : 'off' },
      h('span', { class: 'c-name' }, c.name),
      h('span', { class: `badge ${ok ? 'ok' : c.state === 'exited' || c.state === 'dead' ? 'bad' : 'warn'}` }, STATE_WORDS[c.state] || c.state),
      h('small', { class: 'muted c-status' }, [c.status, c.image].filter(Boolean).join(' · '))));
  }
  items.push(ul);
  return items;
}

function updateCard(card, node, hw) {
  const { el, r } = card;
  const up = !!node.connected;
  setAttr(el, 'data-node', node.name);
  setAttr(el, 'data-state', up ? 'up' : 'down');
  el.classList.toggle('bad', !up);
  setText(r.name, node.name);
  setText(r.badge, up ? 'Online' : 'Unreachable');
  r.badge.className = `badge ${up ? 'ok' : 'bad'}`;
  const nics = (hw && hw.nics) || [];
  r.vpn.hidden = !nics.some((n) => n.wireguard);

  const host = (hw && hw.host) || node.host;
  const hostBits = [];
  hostBits.push(host ? host.hostname : node.hostname);
  if (host) hostBits.push(host.os, host.arch, `on for ${dur(host.uptime_secs)}`);
  if (node.agent_version) hostBits.push(`agent ${node.agent_version}`);
  setText(r.host, hostBits.filter(Boolean).join(' · '));

  // Offline: say since when, offer Wake when a MAC is known.
  r.down.hidden = up;
  if (!up) {
    const seen = node.last_seen;
    r.downText.replaceChildren('This box is not connected.', ' ', seen ? h('span', null, 'Last heard from ', timeAgo(seen), '.') : 'It has not been seen yet.');
    const macs = macsOf(node);
    r.wake.hidden = macs.length === 0;
    r.wakeHelp.hidden = macs.length === 0;
    if (macs.length === 0) r.wakeHelp.textContent = '';
    else r.wakeHelp.textContent = `Sends a Wake-on-LAN signal (to ${macs.join(', ')}) so the box powers on.`;
  }

  r.live.hidden = !up || !host;
  if (!up || !host) return;

  const hist = sample(node.id, hw);
  const now = hist.samples.length ? hist.samples[hist.samples.length - 1].t : Date.now();
  const gpu = hw && hw.gpu;
  const devs = (gpu && gpu.devices) || [];
  const d0 = devs[0];

  // GPU
  if (gpu && gpu.unavailable) {
    r.gpuNote.hidden = false;
    setText(r.gpuNote, `No GPU readings: ${gpu.unavailable}.`);
  } else if (!gpu) {
    r.gpuNote.hidden = false;
    setText(r.gpuNote, 'No GPU readings from this box yet.');
  } else {
    r.gpuNote.hidden = devs.length > 0;
    if (devs.length === 0) setText(r.gpuNote, 'The driver reports no GPU.');
  }
  setText(r.gpuName, devs.length
    ? devs.map((d) => d.name).join(' + ') + (gpu.driver_version ? ` · driver ${gpu.driver_version}` : '') + (gpu.cuda_version ? ` · CUDA ${gpu.cuda_version}` : '')
    : '');
  r.gpuName.hidden = devs.length === 0;
  for (const m of [r.mUtil, r.mTemp, r.mPower]) m.el.hidden = devs.length === 0;
  if (d0) {
    const last = hist.samples[hist.samples.length - 1] || {};
    setText(r.mUtil.value, pct(last.util));
    r.mUtil.spark.update(hist.samples, 'util', 100, '%', now);
    setText(r.mTemp.value, last.temp == null ? '–' : `${Math.round(last.temp)} °C`);
    setText(r.mTemp.sub, last.temp == null ? '' : last.temp >= 85 ? 'Hot' : last.temp >= 70 ? 'Warm' : 'Normal');
    r.mTemp.spark.update(hist.samples, 'temp', 90, ' °C', now);
    const limit = devs.map((d) => d.power_limit_watts).filter((v) => v != null).reduce((a, b) => a + b, 0);
    setText(r.mPower.value, last.power == null ? '–' : `${last.power.toFixed(1)} W`);
    setText(r.mPower.sub, limit ? `limit ${Math.round(limit)} W` : '');
    r.mPower.spark.update(hist.samples, 'power', limit || 0, ' W', now);
  }

  // CPU
  setText(r.mCpu.value, `${pct(host.cpu_usage_pct)} of ${host.cpu_cores} cores`);
  setText(r.mCpu.sub, host.load ? `load ${host.load.one.toFixed(2)} / ${host.load.five.toFixed(2)} / ${host.load.fifteen.toFixed(2)} (1, 5, 15 min)` : '');
  r.mCpu.spark.update(hist.samples, 'cpu', 100, '%', now);

  // Memory (unified on GB10: GPU and CPU share it)
  const unified = d0 && d0.memory && d0.memory.unified;
  const used = host.mem_total_bytes - host.mem_available_bytes;
  setText(r.mMem.value, `${gb(used)} of ${gb(host.mem_total_bytes)}`);
  r.mMem.setBar(host.mem_total_bytes ? used / host.mem_total_bytes : null);
  setText(r.mMem.sub, `${gb(host.mem_available_bytes)} free`);
  r.mMem.spark.update(hist.samples, 'mem', 100, '%', now);
  r.unified.hidden = !unified;
  if (unified) {
    const total = d0.memory.total_bytes ?? host.mem_total_bytes;
    const attributed = devs.map((d) => d.memory && d.memory.gpu_attributed_bytes).filter((v) => v != null).reduce((a, b) => a + b, 0);
    setText(r.unified, `Unified memory: the GPU and the CPU share these ${gb(total)}. Programs on the GPU hold ${gb(attributed)} of it now.`);
  }
  // Separate GPU memory (discrete GPUs only)
  const gpuMem = devs.filter((d) => d.memory && !d.memory.unified && d.memory.total_bytes != null);
  r.mGpuMem.el.hidden = gpuMem.length === 0;
  if (gpuMem.length) {
    const t = gpuMem.reduce((a, d) => a + d.memory.total_bytes, 0);
    const u = gpuMem.reduce((a, d) => a + (d.memory.used_bytes || 0), 0);
    setText(r.mGpuMem.value, `${gb(u)} of ${gb(t)}`);
    r.mGpuMem.setBar(t ? u / t : null);
    setText(r.mGpuMem.sub, `${gb(t - u)} free`);
  }

  // Model store disk
  const stores = (hw && hw.store) || [];
  patch(r.store, stores, () => {
    if (stores.length === 0) return null;
    return [h('h4', null, 'Disk for model files'), ...stores.map((st) => {
      const usedB = st.total_bytes - st.available_bytes;
      const f = st.total_bytes ? usedB / st.total_bytes : 0;
      const fillEl = h('span', { class: 'bar-fill' });
      fillEl.style.width = `${(f * 100).toFixed(1)}%`;
      return h('div', { class: 'store-row' },
        h('div', { class: 'store-line' }, h('strong', null, `${gb(st.available_bytes)} free`), ` of ${gb(st.total_bytes)}`),
        h('span', { class: `bar${f > 0.9 ? ' high' : f > 0.75 ? ' mid' : ''}` }, fillEl),
        h('small', { class: 'muted path' }, st.root));
    })];
  });

  // GPU memory per container
  const procs = [];
  for (const d of devs) for (const p of d.processes || []) procs.push(p);
  const byOwner = new Map();
  for (const p of procs) {
    const name = p.container_id ? containerName(node.containers, p.container_id) || `container ${p.container_id.slice(0, 12)}` : 'programs outside containers';
    const cur = byOwner.get(name) || { bytes: 0, known: false, count: 0 };
    if (p.used_bytes != null) { cur.bytes += p.used_bytes; cur.known = true; }
    cur.count += 1;
    byOwner.set(name, cur);
  }
  const rows = [...byOwner.entries()].sort((a, b) => b[1].bytes - a[1].bytes);
  patch(r.procs, rows, () => {
    if (rows.length === 0) return null;
    return [h('h4', null, 'GPU memory by container'),
      h('ul', { class: 'proc-list' }, rows.map(([name, v]) => h('li', null,
        h('span', null, name), h('strong', null, v.known ? gb(v.bytes) : 'not reported'))))];
  });

  patch(r.containers, { c: node.containers, d: node.docker, up }, () => renderContainers(node));

  const shown = nics.filter((n) => !n.loopback && (n.ips || []).length);
  patch(r.nics, shown, () => {
    if (shown.length === 0) return null;
    return h('details', null, h('summary', null, 'Network'),
      h('ul', { class: 'nic-list' }, shown.map((n) => h('li', null,
        h('strong', null, n.name), n.wireguard ? h('span', { class: 'badge vpn' }, 'VPN') : null, ' ',
        h('span', { class: 'mono' }, (n.ips || []).join(', ')), ' ',
        h('small', { class: 'muted mono' }, n.mac)))));
  });
}

export function updateHardware() {
  const list = nodes();
  const hw = part('hardware');
  const byId = new Map(((hw && hw.nodes) || []).map((n) => [n.id, n]));
  const box = $('#node-cards');
  const seen = new Set();
  list.forEach((node, i) => {
    seen.add(node.id);
    let card = cards.get(node.id);
    if (!card) {
      card = buildCard(node);
      cards.set(node.id, card);
    }
    if (box.children[i] !== card.el) box.insertBefore(card.el, box.children[i] || null);
    updateCard(card, node, byId.get(node.id));
  });
  for (const [id, card] of cards) {
    if (!seen.has(id)) { card.el.remove(); cards.delete(id); history.delete(id); }
  }
  $('#no-nodes').hidden = list.length > 0;
}

