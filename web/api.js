// Talking to the controller. Control actions are same-origin fetches with a JSON body: the
// browser sends Origin, which the controller accepts as the dashboard's session.

export class ApiError extends Error {
  constructor(status, code, message, extra) {
    super(message);
    this.status = status;
    this.code = code;
    this.extra = extra || {};
  }
}

async function parse(resp) {
  const text = await resp.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** Call the API; resolves to the parsed body, or throws ApiError with the API's message. */
export async function api(method, path, body) {
  const init = { method, headers: { Accept: 'application/json' }, credentials: 'same-origin' };
  if (method !== 'GET' && method !== 'HEAD') {
    init.headers['Content-Type'] = 'application/json';
    if (body !== undefined) init.body = JSON.stringify(body);
    else if (method !== 'DELETE') init.body = '{}';
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'network', `Cannot reach the controller (${e.message}). Check that it is running.`);
  }
  const data = await parse(resp);
  if (!resp.ok) {
    const err = data && typeof data === 'object' ? data.error : null;
    const message = err && err.message
      ? err.message
      : `${resp.status} ${resp.statusText}${typeof data === 'string' && data ? `: ${data.slice(0, 300)}` : ''}`;
    throw new ApiError(resp.status, err && err.code, message, err || {});
  }
  return data;
}

export const get = (path) => api('GET', path);

/** Encode one path segment. */
export const seg = (v) => encodeURIComponent(String(v));
