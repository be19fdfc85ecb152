// Small formatting helpers shared by the views: times, durations, command replies.

import { has, lang, num, t } from "./i18n.js";

function locale() {
  return lang() === "vi" ? "vi-VN" : "en-GB";
}

/** "18:05" today, "28/11 18:05" otherwise; "—" for nothing. */
export function time(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  const sameDay = date.toDateString() === new Date().toDateString();
  const options = sameDay
    ? { hour: "2-digit", minute: "2-digit", second: "2-digit" }
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
  if (minutes) return t("unit.minutes", { m: minutes });
  return t("unit.seconds", { s });
}

export function ms(value) {
  return value === null || value === undefined ? "—" : t("unit.ms", { v: num(value, 1) });
}

export function pct(value) {
  return value === null || value === undefined ? "—" : t("unit.pct", { v: num(value, 1) });
}

/** The text of a command reply: translated status, then the server's message if any. */
export function replyText(reply) {
  const status = t(`status.${reply.status}`);
  const message = reply.error?.message || reply.error?.code;
  return message ? `${status}: ${message}` : status;
}

/** Show a reply (or an error) in a status line, coloured by outcome. */
export function showReply(el, reply) {
  el.textContent = replyText(reply);
  el.dataset.status = reply.status;
}

export function showError(el, error) {
  let text;
  if (error?.status === 429) text = t("error.locked", { s: error.retryAfter ?? "?" });
  else if (error?.status === 413) text = t("error.too_large");
  else if (error?.status === 403) text = t("error.forbidden");
  else if (error?.status === 401) text = t("error.unauthenticated");
  else if (error?.status) text = `${t("error.http", { code: error.status })}: ${error.message}`;
  else text = t("error.network");
  el.textContent = text;
  el.dataset.status = "error";
}

export function showInfo(el, text) {
  el.textContent = text;
  el.dataset.status = "info";
}

/** Who switched: "schedule", "web", "power_on:restore", "interlock:yard" -> words. */
export function sourceText(source) {
  if (!source) return "—";
  const [base, detail] = String(source).split(":", 2);
  if (!has(`source.${base}`)) return String(source);
  return detail ? `${t(`source.${base}`)} (${detail})` : t(`source.${base}`);
}
