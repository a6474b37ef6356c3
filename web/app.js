// Placeholder dashboard: lists nodes from GET /api/nodes every 2 s.
// Everything from the API is inserted with textContent, never as HTML.

const GiB = 1024 ** 3;

function cell(text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function uptime(secs) {
  const d = Math.floor(secs / 86400), h = Math.floor((secs % 86400) / 3600), m = Math.floor((secs % 3600) / 60);
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m`;
}

function row(node) {
  const tr = document.createElement('tr');
  const host = node.host;
  tr.append(
    cell(node.name),
    cell(node.connected ? 'connected' : 'offline', node.connected ? 'ok' : 'off'),
    cell(host ? `${host.hostname} · ${host.os} · ${host.arch}` : node.hostname),
    cell(host ? `${host.cpu_usage_pct.toFixed(0)}% of ${host.cpu_cores} · load ${host.load.one.toFixed(2)}` : '–'),
    cell(host ? `${((host.mem_total_bytes - host.mem_available_bytes) / GiB).toFixed(1)} / ${(host.mem_total_bytes / GiB).toFixed(1)} GiB` : '–'),
    cell(host ? uptime(host.uptime_secs) : '–'),
    cell(node.agent_version),
  );
  return tr;
}

async function refresh() {
  const status = document.getElementById('status');
  const table = document.getElementById('nodes');
  try {
    const resp = await fetch('/api/nodes');
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    const nodes = await resp.json();
    table.tBodies[0].replaceChildren(...nodes.map(row));
    table.hidden = nodes.length === 0;
    status.textContent = nodes.length === 0
      ? 'No nodes yet. Add a box below.'
      : `${nodes.filter((n) => n.connected).length} of ${nodes.length} connected`;
  } catch (e) {
    status.textContent = `Cannot reach the controller (${e.message}); retrying…`;
  }
}

refresh();
setInterval(refresh, 2000);
