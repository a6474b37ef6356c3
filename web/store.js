// The page's data: the latest live state (from GET /api/live), and helpers shared by the views.

export const store = {
  /** The latest `state` snapshot, or null before the first. */
  state: null,
  /** GET /api/models, or null before the first load. */
  menu: null,
};

/** A part of the state, or null when missing or when its endpoint failed ({error}). */
export function part(name) {
  const v = store.state ? store.state[name] : null;
  if (v == null || (typeof v === 'object' && !Array.isArray(v) && v.error)) return null;
  return v;
}

/** The error of a part of the state that failed, or null. */
export function partError(name) {
  const v = store.state ? store.state[name] : null;
  return v && typeof v === 'object' && !Array.isArray(v) && v.error ? v.error : null;
}

export function nodes() {
  const n = store.state && store.state.nodes;
  return Array.isArray(n) ? n : [];
}

export function nodeById(id) {
  return nodes().find((n) => n.id === id) || null;
}

const knownNames = new Map(); // node id -> last name seen (kept for revoked nodes)

/** The display name of a node id (falls back to the id). */
export function nodeName(id) {
  const n = nodeById(id);
  if (n) { knownNames.set(id, n.name); return n.name; }
  return knownNames.get(id) || id;
}

/** Remember the names of the nodes in the current state. */
export function rememberNames() {
  for (const n of nodes()) knownNames.set(n.id, n.name);
}

/** The MAC addresses remembered for a node: plain strings or JSON {"mac", "ips"} entries. */
export function macsOf(node) {
  const out = [];
  for (const m of (node && node.macs) || []) {
    if (typeof m === 'string' && m.trim().startsWith('{')) {
      try {
        const v = JSON.parse(m);
        if (v && v.mac) out.push(String(v.mac));
      } catch { /* not JSON: ignore */ }
    } else if (typeof m === 'string' && m) {
      out.push(m);
    } else if (m && typeof m === 'object' && m.mac) {
      out.push(String(m.mac));
    }
  }
  return out;
}

/** Recipe keys loaded now, from the live swap status: key -> [{name, container, state, ready}]. */
export function loadedNow() {
  const status = part('status');
  const map = new Map();
  for (const l of (status && status.loaded) || []) map.set(l.key, l.nodes || []);
  return map;
}

/** The swap job running now (a job view), or null. */
export function activeJob() {
  const status = part('status');
  return (status && status.active_job) || null;
}
