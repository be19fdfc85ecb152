// The two string catalogues (i18n/vi.json, i18n/en.json) and the language choice.
//
// Vietnamese is the default: the operators are the village head and volunteers. The
// choice is kept in localStorage so a phone remembers it. Markup carries only keys
// (data-i18n, data-i18n-placeholder, data-i18n-aria-label, data-i18n-title), which
// apply() fills; code calls t(key, params). A key missing from English falls back to
// Vietnamese, then to the key itself, so a forgotten string shows up instead of a blank.

export const LANGUAGES = ["vi", "en"];
const DEFAULT = "vi";
const STORAGE_KEY = "vg.lang";

const catalogues = {};
let current = DEFAULT;
const listeners = new Set();

function stored() {
  try {
    return localStorage.getItem(STORAGE_KEY);
  } catch {
    return null; // storage disabled: stay in the default language
  }
}

async function load(lang) {
  const response = await fetch(`/static/i18n/${lang}.json`, { cache: "no-cache" });
  if (!response.ok) throw new Error(`catalogue ${lang}: HTTP ${response.status}`);
  catalogues[lang] = await response.json();
}

/** Load both catalogues and pick the stored language (or Vietnamese). */
export async function initI18n() {
  await Promise.all(LANGUAGES.map(load));
  const choice = stored();
  current = LANGUAGES.includes(choice) ? choice : DEFAULT;
  apply(document);
}

export function lang() {
  return current;
}

/** The translation of ``key``; ``{name}`` placeholders are replaced from ``params``. */
export function t(key, params) {
  const text = catalogues[current]?.[key] ?? catalogues[DEFAULT]?.[key] ?? key;
  if (!params) return text;
  return text.replace(/\{(\w+)\}/g, (whole, name) =>
    Object.hasOwn(params, name) ? String(params[name]) : whole,
  );
}

/** True when a catalogue has ``key`` (views use it for optional labels). */
export function has(key) {
  return Object.hasOwn(catalogues[current] || {}, key);
}

/** Fill every data-i18n* attribute under ``root`` with the current language. */
export function apply(root) {
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) {
    el.setAttribute("placeholder", t(el.dataset.i18nPlaceholder));
  }
  for (const el of root.querySelectorAll("[data-i18n-aria-label]")) {
    el.setAttribute("aria-label", t(el.dataset.i18nAriaLabel));
  }
  for (const el of root.querySelectorAll("[data-i18n-title]")) {
    el.setAttribute("title", t(el.dataset.i18nTitle));
  }
  if (root === document) document.documentElement.lang = current;
}

/** Switch language, remember it, refill the markup and tell the views. */
export function setLang(next) {
  if (!LANGUAGES.includes(next) || next === current) return;
  current = next;
  try {
    localStorage.setItem(STORAGE_KEY, next);
  } catch {
    // not remembered, still switched for this page
  }
  apply(document);
  for (const listener of listeners) listener(next);
}

export function onLangChange(listener) {
  listeners.add(listener);
}

/** Number formatting in the page's language (1.234,5 in Vietnamese). */
export function num(value, digits = 0) {
  return new Intl.NumberFormat(current === "vi" ? "vi-VN" : "en-GB", {
    maximumFractionDigits: digits,
    minimumFractionDigits: 0,
  }).format(value);
}
