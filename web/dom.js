// DOM helpers. Every piece of text from the API goes in through textContent (text nodes) or
// setAttribute: nothing here ever parses a string as HTML.

const SVG_NS = 'http://www.w3.org/2000/svg';

function appendKids(el, kids) {
  for (const k of kids) {
    if (k == null || k === false) continue;
    if (Array.isArray(k)) appendKids(el, k);
    else if (k instanceof Node) el.append(k);
    else el.append(document.createTextNode(String(k)));
  }
}

function setProps(el, props) {
  if (!props) return;
  for (const [k, v] of Object.entries(props)) {
    if (v == null || v === false) continue;
    if (k === 'class') el.setAttribute('class', Array.isArray(v) ? v.filter(Boolean).join(' ') : v);
    else if (k === 'text') el.textContent = String(v);
    else if (k === 'dataset') for (const [dk, dv] of Object.entries(v)) { if (dv != null) el.dataset[dk] = String(dv); }
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'value' || k === 'checked' || k === 'disabled' || k === 'selected' || k === 'indeterminate') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

/** Create an HTML element: h('p', {class: 'x'}, 'text', child, [more]). */
export function h(tag, props, ...kids) {
  const el = document.createElement(tag);
  setProps(el, props);
  appendKids(el, kids);
  return el;
}

/** Create an SVG element (attributes only). */
export function s(tag, attrs, ...kids) {
  const el = document.createElementNS(SVG_NS, tag);
  if (attrs) for (const [k, v] of Object.entries(attrs)) if (v != null) el.setAttribute(k, String(v));
  appendKids(el, kids);
  return el;
}

/** Replace an element's children. */
export function fill(el, ...kids) {
  el.replaceChildren();
  appendKids(el, kids);
  return el;
}

/**
 * Rebuild `el`'s children with `build()` only when `sig` (any JSON-able value) changed since
 * the last call. Keeps focus, selection and open <details> stable under a live feed.
 */
export function patch(el, sig, build) {
  const key = typeof sig === 'string' ? sig : JSON.stringify(sig);
  if (el.__sig === key) return false;
  el.__sig = key;
  el.replaceChildren();
  appendKids(el, [build()]);
  return true;
}

/** Set textContent only when it changed (avoids needless mutations and screen-reader noise). */
export function setText(el, text) {
  const t = text == null ? '' : String(text);
  if (el.textContent !== t) el.textContent = t;
}

/** Set or clear an attribute only when it changed. */
export function setAttr(el, name, value) {
  if (value == null || value === false) {
    if (el.hasAttribute(name)) el.removeAttribute(name);
    return;
  }
  const v = value === true ? '' : String(value);
  if (el.getAttribute(name) !== v) el.setAttribute(name, v);
}

export function show(el, visible) {
  el.hidden = !visible;
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

/** A labelled form field: returns {wrap, input}. */
let fieldSeq = 0;
export function field(label, input, help) {
  const id = input.id || `f${++fieldSeq}`;
  input.id = id;
  const kids = [h('label', { for: id }, label), input];
  if (help) {
    const hid = `${id}-help`;
    input.setAttribute('aria-describedby', hid);
    kids.push(h('small', { id: hid, class: 'help' }, help));
  }
  return { wrap: h('div', { class: 'field' }, kids), input };
}

/** A checkbox with its label after it. */
export function checkbox(label, props = {}) {
  const id = props.id || `f${++fieldSeq}`;
  const input = h('input', { type: 'checkbox', ...props, id });
  return { wrap: h('div', { class: 'check' }, input, h('label', { for: id }, label)), input };
}
