// Small formatting helpers shared by the views: times, sizes, names and every message.
//
// The server sends codes and parameters, never prose the page must show: an error is
// {code, message, detail?: {reason, field, row, key, ...params}} and only ``code`` and
// ``detail`` are read here (``message`` is English for logs and engineers). Each code and
// reason has a sentence in both catalogues (err.*, reason.*, hreason.*, pareason.*), with a
// generic sentence when a newer daemon sends one this page does not know yet.

import { has, lang, num, t } from "./i18n.js";
import { store } from "./store.js";

function locale() {
  return lang() === "vi" ? "vi-VN" : "en-GB";
}

/** "18:05" today, "28/11 18:05" otherwise; "—" for nothing. */
export function time(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "—";
  const sameDay = date.toDateString() === new Date().toDateString();
  const options = sameDay
    ? { hour: "2-digit", minute: "2-digit" }
    : { day: "2-digit", month: "2-digit", hour: "2-digit", minute: "2-digit" };
  return new Intl.DateTimeFormat(locale(), options).format(date);
}

/** 3725 -> "1 giờ 2 phút" / "1 h 2 min". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.max(0, Math.round(seconds));
  const days = Math.floor(s / 86400);
  const hours = Math.floor((s % 86400) / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  if (days) return t("unit.days_hours", { d: days, h: hours });
  if (hours) return t("unit.hours_minutes", { h: hours, m: minutes });
  if (minutes && s % 60 && s < 600) return t("pa.minutes_seconds", { m: minutes, s: s % 60 });
  if (minutes) return t("unit.minutes", { m: minutes });
  return t("unit.seconds", { s });
}

export function ms(value) {
  return value === null || value === undefined ? "—" : t("unit.ms", { v: num(value, 1) });
}

export function pct(value) {
  return value === null || value === undefined ? "—" : t("unit.pct", { v: num(value, 1) });
}

/** 1536000 -> "1,5 MB". */
export function bytes(value) {
  if (value === null || value === undefined) return "—";
  if (value >= 1e9) return t("unit.gb", { v: num(value / 1e9, 1) });
  if (value >= 1e6) return t("unit.mb", { v: num(value / 1e6, 1) });
  return t("unit.kb", { v: num(Math.max(1, value / 1e3), 0) });
}

/** A key's catalogue text, or ``fallback``'s when the catalogue has no such key. */
function either(key, fallback, params) {
  return has(key) ? t(key, params) : t(fallback, params);
}

function capital(text) {
  return text ? text[0].toLocaleUpperCase(locale()) + text.slice(1) : text;
}

/** One problem of ``error.detail`` (reason, key, params) in words, without its row. */
export function problemText(detail) {
  const params = { ...detail, key_name: fieldName(detail) };
  if (typeof detail.max_bytes === "number") params.max_mb = num(detail.max_bytes / 1e6, 0);
  const reason = either(`reason.${detail.reason}`, "reason.unknown", params);
  const field = detail.key; // a row's key (on, off, days...): said before the reason
  return field && has(`field.${field}`) && detail.reason !== "missing_key"
    ? t("reason.field", { field: t(`field.${field}`), reason })
    : reason;
}

/** The sentence of one problem: "Dòng 2: giờ tắt: …" for a row, else capitalised. */
export function reasonText(detail) {
  const sentence = problemText(detail);
  return detail.row ? t("reason.row", { row: detail.row, reason: sentence }) : capital(sentence);
}

/**
 * What a problem is about, in words: a row's key ("on" is a schedule row's on time), else
 * a command's argument ("on" of relay.set is on-or-off), else a neutral word.
 */
function fieldName(detail) {
  if (detail.key) return has(`field.${detail.key}`) ? t(`field.${detail.key}`) : t("field.other");
  for (const key of [`arg.${detail.field}`, `field.${detail.field}`]) {
    if (detail.field && has(key)) return t(key);
  }
  return t("field.other");
}

/** The sentence for an API or reply error: {code, detail?}; ``message`` is never shown. */
export function errorText(error, retryAfter) {
  if (!error) return "";
  const code = error.code || "unknown";
  const general = either(`err.${code}`, "err.unknown", { code, s: retryAfter ?? "?" });
  if (!error.detail?.reason) return general;
  return reasonText(error.detail);
}

/** The text of a command reply: its status, and for a refusal the reason in words. */
export function replyText(reply) {
  const status = t(`status.${reply.status}`);
  return reply.error ? `${status}: ${errorText(reply.error)}` : status;
}

/** Bring a status line into view (the finger is on the control next to it). */
export function reveal(el) {
  if (typeof el.scrollIntoView !== "function") return;
  const box = el.getBoundingClientRect();
  const header = document.querySelector(".topbar")?.getBoundingClientRect().bottom ?? 0;
  if (box.top < header || box.bottom > window.innerHeight) {
    el.scrollIntoView({ block: "center", behavior: "instant" });
  }
}

/** Show a reply (or an error) in a status line, coloured by outcome. */
export function showReply(el, reply) {
  el.textContent = replyText(reply);
  el.dataset.status = reply.status;
  reveal(el);
}

export function errorOf(error) {
  if (!error?.status) return t("error.network");
  const body = error.body?.error;
  if (error.status === 429 && !body) return t("error.locked", { s: error.retryAfter ?? "?" });
  if (body?.code) return errorText(body, error.retryAfter);
  if (error.status === 413) return t("error.too_large");
  if (error.status === 403) return t("error.forbidden");
  if (error.status === 401) return t("error.unauthenticated");
  if (error.status === 404) return t("err.not_found");
  return t("error.http", { code: error.status });
}

export function showError(el, error) {
  el.textContent = errorOf(error);
  el.dataset.status = "error";
  reveal(el);
}

export function showInfo(el, text, status = "info") {
  el.textContent = text;
  el.dataset.status = status;
  reveal(el);
}

/** Who switched: "schedule", "web", "power_on:restore", "interlock:yard" -> words. */
export function sourceText(source) {
  if (!source) return t("source.unknown");
  const [base, detail] = String(source).split(":", 2);
  if (!has(`source.${base}`)) return t("source.unknown");
  if (base === "power_on") {
    return t("source.power_on", { policy: either(`power_on.${detail}`, "source.unknown") });
  }
  if (base === "interlock") return t("source.interlock", { relay: relayName(detail) });
  return t(`source.${base}`);
}

/** A relay's label (what the operator named it), else its id. */
export function relayName(name) {
  return store.state.relays?.relays?.[name]?.label || name || "—";
}

/** A clip's display name: its label, the catalogue's word for a bundled clip, its id. */
export function clipName(id) {
  if (!id) return "—";
  const clip = store.clips.find((c) => c.name === id);
  if (clip?.label && clip.label !== id) return clip.label;
  const key = `clipname.${String(id).replaceAll("-", "_")}`;
  if (has(key)) return t(key);
  return clip?.label || id;
}

/** A command type (relay.set) in words. */
export function commandName(type) {
  return either(`command.${String(type || "unknown").replaceAll(".", "_")}`, "command.unknown");
}

/**
 * A hotspot state's reason: ``reason_code`` (+ ``reason_params``) in words, never the
 * text. A probe's code is ``<probe>_<what>`` (tcp_refused): the what is worded, and which
 * check saw it.
 */
export function hotspotReason(view) {
  if (!view?.reason_code && !view?.reason) return null;
  const code = view.reason_code;
  if (!code) return legacyReason(String(view.reason));
  const params = { ...(view.reason_params || {}) };
  if (has(`hreason.${code}`)) return t(`hreason.${code}`, params);
  const probe = /^(icmp|tcp|http|dns)_(.+)$/.exec(code);
  if (probe && has(`hreason.${probe[2]}`)) {
    return t("hreason.by_probe", {
      reason: t(`hreason.${probe[2]}`, params),
      probe: t(`probe.${probe[1]}`),
    });
  }
  return t("hreason.other");
}

/** An older daemon sends only its English reason: map the known ones, hide the rest. */
function legacyReason(text) {
  const known = [
    [/^starting$/, "starting"],
    [/^no uplink probes/, "no_uplink_probes"],
    [/^no probes/, "no_probes"],
    [/^uplink down/, "uplink_down"],
    [/refused/, "refused"],
    [/time(d)? ?out/, "timeout"],
    [/unreachable|no route/, "unreachable"],
    [/name|resolve|dns/i, "dns"],
    [/permission/, "permission"],
  ];
  const hit = known.find(([pattern]) => pattern.test(text));
  return t(`hreason.${hit ? hit[1] : "failed"}`);
}
