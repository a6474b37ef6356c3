// Adding boxes (a one-time join token and the commands to run on the box) and managing the
// joined ones: rename, revoke.

import { h, $, patch, fill } from './dom.js';
import { clock } from './fmt.js';
import { api, seg } from './api.js';
import { confirmAction, toast, busy, say, copyText, timeAgo } from './ui.js';
import { nodes } from './store.js';

/** Shell-quote a value for the commands shown (tokens are base64url, but be safe). */
function q(v) {
  return `'${String(v).replace(/'/g, `'\\''`)}'`;
}

async function addNode() {
  const btn = $('#add-node');
  const ttl = Number($('#token-ttl').value) || 3600;
  await busy(btn, 'Making a code…', async () => {
    const result = $('#join-result');
    try {
      const res = await api('POST', '/api/nodes/tokens', { ttl_seconds: ttl });
      $('#join-token').textContent = res.token;
      fill($('#join-expiry'), '(single use, valid until ', clock(res.expires_at), ', ', timeAgo(res.expires_at), ')');
      const token = q(res.token);
      $('#join-commands').textContent = [
        '# with the spark-agent package (.deb, systemd service):',
        `sudo -u spark-agent spark-agent join ${token} --state-dir /var/lib/spark-agent`,
        'sudo systemctl enable --now spark-agent',
        '',
        '# or by hand, without the package:',
        `spark-agent join ${token}`,
        'spark-agent run',
      ].join('\n');
      $('#join-panel').hidden = false;
      result.hidden = true;
      const gws = (res.gateways || []).join(', ');
      if (gws) {
        result.hidden = false;
        say(result, 'info', `The box will call the controller at ${gws}. It must be able to reach that address.`);
      }
      $('#join-token').focus();
    } catch (e) {
      say(result, 'error', `Could not make a join code: ${e.message}`);
    }
  });
}

async function rename(node, input, button, result) {
  const name = input.value.trim();
  if (!name || name === node.name) { say(result, 'info', 'Type a new name first.'); return; }
  await busy(button, 'Renaming…', async () => {
    try {
      const res = await api('PATCH', `/api/nodes/${seg(node.id)}`, { name });
      say(result, 'ok', `Renamed to ${res.name}.`);
      input.value = '';
    } catch (e) {
      say(result, 'error', `Not renamed: ${e.message}`);
    }
  });
}

async function revoke(node, button, result) {
  const yes = await confirmAction(`Revoke the box ${node.name}? It is disconnected at once and refused from then on. To use it again, join it with a new code.`,
    { yes: 'Revoke it', title: 'Revoke a box' });
  if (!yes) return;
  await busy(button, 'Revoking…', async () => {
    try {
      await api('DELETE', `/api/nodes/${seg(node.id)}`);
      toast(`${node.name} was revoked.`, 'ok');
    } catch (e) {
      say(result, 'error', `Not revoked: ${e.message}`);
    }
  });
}

const rows = new Map(); // id -> {el, info}

function buildRow(node) {
  const input = h('input', { type: 'text', autocomplete: 'off', spellcheck: 'false', placeholder: 'new name', maxlength: 64 });
  input.id = `rename-${node.id}`;
  const label = h('label', { for: input.id, class: 'visually-hidden' }, `New name for ${node.name}`);
  const renameBtn = h('button', { type: 'button', class: 'small', dataset: { action: 'rename' } }, 'Rename');
  const revokeBtn = h('button', { type: 'button', class: 'small danger-outline', dataset: { action: 'revoke' } }, 'Revoke');
  const result = h('div', { class: 'result', 'aria-live': 'polite' });
  const info = h('div', { class: 'admin-info' });
  const el = h('li', { class: 'admin-row', dataset: { adminNodeId: node.id, adminNode: node.name } },
    info,
    h('form', { class: 'row rename', novalidate: true }, label, input, renameBtn, revokeBtn),
    result);
  const entry = { el, info, label, node };
  el.querySelector('form').addEventListener('submit', (e) => { e.preventDefault(); rename(entry.node, input, renameBtn, result); });
  renameBtn.addEventListener('click', () => rename(entry.node, input, renameBtn, result));
  revokeBtn.addEventListener('click', () => revoke(entry.node, revokeBtn, result));
  return entry;
}

export function updateNodes() {
  const list = nodes();
  const box = $('#node-admin');
  let ul = box.querySelector('ul.admin-list');
  if (!ul) { ul = h('ul', { class: 'admin-list' }); fill(box, ul); }
  const seen = new Set();
  list.forEach((node, i) => {
    seen.add(node.id);
    let row = rows.get(node.id);
    if (!row) { row = buildRow(node); rows.set(node.id, row); }
    row.node = node;
    row.el.dataset.adminNode = node.name;
    row.label.textContent = `New name for ${node.name}`;
    if (ul.children[i] !== row.el) ul.insertBefore(row.el, ul.children[i] || null);
    patch(row.info, { n: node.name, c: node.connected, v: node.agent_version, e: node.enrolled_at, x: node.cert_expires_at, h: node.hostname }, () => [
      h('strong', null, node.name), ' ',
      h('span', { class: `badge ${node.connected ? 'ok' : 'bad'}` }, node.connected ? 'online' : 'offline'), ' ',
      h('small', { class: 'muted' }, `id ${node.id} · ${node.hostname || ''}${node.agent_version ? ` · agent ${node.agent_version}` : ''} · joined `,
        timeAgo(node.enrolled_at), node.cert_expires_at ? ` · certificate until ${new Date(node.cert_expires_at).toLocaleDateString()}` : ''),
    ]);
  });
  for (const [id, row] of rows) if (!seen.has(id)) { row.el.remove(); rows.delete(id); }
  if (list.length === 0 && !box.querySelector('.empty')) box.append(h('p', { class: 'empty' }, 'No boxes yet.'));
  if (list.length > 0) { const e = box.querySelector('.empty'); if (e) e.remove(); }
}

export function initNodes() {
  $('#add-node').addEventListener('click', addNode);
  $('#copy-token').addEventListener('click', () => copyText($('#join-token').textContent, $('#join-token')));
  $('#copy-commands').addEventListener('click', () => copyText($('#join-commands').textContent, $('#join-commands')));
}
