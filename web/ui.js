// Shared widgets: the confirmation dialog, the status toast, busy buttons, copy to clipboard.

import { h, $ } from './dom.js';
import { ms, rel, fullTime } from './fmt.js';

let pending = null;

/**
 * Ask a yes/no question in the page's <dialog id="confirm">. Resolves true for yes.
 * `yes` is the label of the confirming button (e.g. "Stop it").
 */
export function confirmAction(question, { yes = 'Yes, go ahead', no = 'Cancel', title = 'Please confirm', danger = true } = {}) {
  const dlg = $('#confirm');
  $('#confirm-title').textContent = title;
  $('#confirm-text').textContent = question;
  const yesBtn = $('#confirm-yes');
  const noBtn = $('#confirm-no');
  yesBtn.textContent = yes;
  noBtn.textContent = no;
  yesBtn.classList.toggle('danger', danger);
  if (pending) pending(false);
  const opener = document.activeElement;
  return new Promise((resolve) => {
    pending = (v) => {
      pending = null;
      // Give the keyboard focus back to the control that asked.
      if (opener && opener.isConnected && typeof opener.focus === 'function') opener.focus();
      resolve(v);
    };
    if (typeof dlg.showModal === 'function') {
      if (!dlg.open) dlg.showModal();
    } else {
      dlg.setAttribute('open', '');
    }
    noBtn.focus();
  });
}

export function initConfirm() {
  const dlg = $('#confirm');
  const close = (v) => {
    if (dlg.open) dlg.close();
    dlg.removeAttribute('open');
    if (pending) pending(v);
  };
  $('#confirm-yes').addEventListener('click', (e) => { e.preventDefault(); close(true); });
  $('#confirm-no').addEventListener('click', (e) => { e.preventDefault(); close(false); });
  dlg.addEventListener('cancel', (e) => { e.preventDefault(); close(false); });
}

let toastTimer = null;
/** A short message in the live region at the bottom of the page. kind: ok | error | info. */
export function toast(message, kind = 'info') {
  const t = $('#toast');
  t.className = `toast ${kind}`;
  t.textContent = message;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, kind === 'error' ? 12000 : 6000);
}

/** Disable `button` while `promise` runs; shows `label` meanwhile. Returns the promise's value. */
export async function busy(button, label, fn) {
  const old = button.textContent;
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  if (label) button.textContent = label;
  try {
    return await fn();
  } finally {
    button.disabled = false;
    button.removeAttribute('aria-busy');
    button.textContent = old;
  }
}

/** An inline message element (role=status) for results next to a control. */
export function note(kind, ...text) {
  return h('p', { class: `note ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, ...text);
}

/** Put a message in a result slot. kind: ok | error | info. */
export function say(slot, kind, ...text) {
  slot.replaceChildren(note(kind, ...text));
  slot.hidden = false;
}

/** Copy `text`; when the clipboard is not available (plain http on a LAN address), select `el`'s text. */
export async function copyText(text, el) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      toast('Copied to the clipboard.', 'ok');
      return true;
    }
  } catch { /* fall back to selecting */ }
  if (el) {
    const range = document.createRange();
    range.selectNodeContents(el);
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    let ok = false;
    try { ok = document.execCommand('copy'); } catch { ok = false; }
    toast(ok ? 'Copied to the clipboard.' : 'The text is selected: press Ctrl+C (or ⌘C) to copy it.', ok ? 'ok' : 'info');
    return ok;
  }
  toast('Copying is not available here; select the text and copy it.', 'info');
  return false;
}

/** A "Copy" button for the text of `target` (an element) or a fixed string. */
export function copyButton(target, label = 'Copy') {
  return h('button', {
    type: 'button',
    class: 'small',
    onclick: () => copyText(typeof target === 'string' ? target : target.textContent, typeof target === 'string' ? null : target),
  }, label);
}

/** A <time> showing "12 s ago" (kept fresh by tickTimes), with the full time as a tooltip. */
export function timeAgo(t) {
  const el = h('time', { class: 'rel' });
  setTime(el, t);
  return el;
}

export function setTime(el, t) {
  const v = ms(t);
  el.dataset.t = v == null ? '' : String(v);
  if (v != null) {
    el.setAttribute('datetime', new Date(v).toISOString());
    el.title = fullTime(v);
  }
  el.textContent = rel(v);
}

/** Refresh every relative time on the page. */
export function tickTimes() {
  const now = Date.now();
  for (const el of document.querySelectorAll('time.rel')) {
    const v = el.dataset.t ? Number(el.dataset.t) : null;
    const t = rel(v, now);
    if (el.textContent !== t) el.textContent = t;
  }
}
