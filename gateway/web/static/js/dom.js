// Building DOM nodes without ever parsing strings as HTML.
//
// Every text that comes from the gateway (relay labels, clip names, log lines) reaches the
// page through textContent or attribute values, never innerHTML: a label such as
// `<img src=x onerror=alert(1)>` stays visible text. Event handlers are attached with
// addEventListener, never as `on*` attributes, which the Content-Security-Policy forbids.

import { t } from "./i18n.js";

const SVG_NS = "http://www.w3.org/2000/svg";

function applyProps(el, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key === "text") el.textContent = String(value);
    else if (key === "i18n") {
      el.dataset.i18n = value;
      el.textContent = t(value);
    } else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "style") {
      throw new Error("inline styles are blocked by the CSP: use a class");
    } else if (key in el && typeof value !== "string" && !(el instanceof SVGElement)) {
      el[key] = value; // properties such as checked, value, disabled
    } else el.setAttribute(key, value === true ? "" : String(value));
  }
}

function appendChildren(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** An HTML element: h("p", {class: "x", text: "label"}, child, ...). */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  applyProps(el, props);
  appendChildren(el, children);
  return el;
}

/** An SVG element with the same calling convention. */
export function svg(tag, props, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  applyProps(el, props);
  appendChildren(el, children);
  return el;
}

/** Remove every child of ``el``. */
export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

/** document.getElementById that fails loudly when the markup and the code disagree. */
export function byId(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing from index.html`);
  return el;
}

/** Replace the option list of a <select>, keeping the chosen value when it still exists. */
export function setOptions(select, options) {
  const previous = select.value;
  clear(select);
  for (const { value, label } of options) select.append(h("option", { value, text: label }));
  if (options.some((o) => o.value === previous)) select.value = previous;
}
