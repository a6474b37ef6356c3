// Formatting in plain words: GB with one decimal, human durations, relative times.

export const GB = 1e9;

/** Bytes to "12.3 GB" (decimal GB, as the API's *_gb fields). */
export function gb(bytes) {
  if (bytes == null || !Number.isFinite(Number(bytes))) return '–';
  return `${(Number(bytes) / GB).toFixed(1)} GB`;
}

/** A size for limits: "32 MiB", "4 KiB", "1.5 GiB". */
export function binSize(bytes) {
  if (bytes == null) return '–';
  const units = ['bytes', 'KiB', 'MiB', 'GiB'];
  let v = Number(bytes);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${Number.isInteger(v) ? v : v.toFixed(1)} ${units[i]}`;
}

/** Seconds to "3 min 12 s", "1 h 4 min", "2 d 3 h", "45 s". */
export function dur(seconds) {
  if (seconds == null || !Number.isFinite(Number(seconds))) return '–';
  let s = Math.max(0, Math.round(Number(seconds)));
  const d = Math.floor(s / 86400); s -= d * 86400;
  const hr = Math.floor(s / 3600); s -= hr * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  if (d) return hr ? `${d} d ${hr} h` : `${d} d`;
  if (hr) return m ? `${hr} h ${m} min` : `${hr} h`;
  if (m) return s ? `${m} min ${s} s` : `${m} min`;
  return `${s} s`;
}

/** A short duration: "12 s", "3 min", "2 h", "4 d". */
function short(seconds) {
  const s = Math.abs(seconds);
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400 * 2) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

/** Parse an API time (RFC 3339 string or ms number) to ms since the epoch, or null. */
export function ms(t) {
  if (t == null) return null;
  if (typeof t === 'number') return t;
  const v = Date.parse(t);
  return Number.isNaN(v) ? null : v;
}

/** "12 s ago", "in 5 min", "just now". */
export function rel(t, now = Date.now()) {
  const v = ms(t);
  if (v == null) return '–';
  const diff = (now - v) / 1000;
  if (Math.abs(diff) < 2) return 'just now';
  return diff > 0 ? `${short(diff)} ago` : `in ${short(diff)}`;
}

/** Local clock time "14:03:12" (today) or "3 Dec 14:03". */
export function clock(t) {
  const v = ms(t);
  if (v == null) return '–';
  const d = new Date(v);
  const today = new Date();
  const time = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  if (d.toDateString() === today.toDateString()) return time;
  return `${d.toLocaleDateString([], { day: 'numeric', month: 'short' })} ${time}`;
}

/** Full local date and time, for tooltips. */
export function fullTime(t) {
  const v = ms(t);
  return v == null ? '' : new Date(v).toLocaleString();
}

export function pct(v, digits = 0) {
  return v == null || !Number.isFinite(Number(v)) ? '–' : `${Number(v).toFixed(digits)}%`;
}

export function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}
