// Events: what the gateway did, newest first, live, each as a sentence ("Đèn sân bật — từ
// điện thoại — 19:02"), filterable by kind and by any text in the record.
//
// One line per action: a tap on "Bật" produces a command event and a relay.switched
// event; the switch says it all, so a command that succeeded is listed only when its
// effect has no event of its own, or when the "Lệnh" filter asks for commands. A refused
// or failed command is always listed, with its reason in words. The daemon's log lines
// (engineers' text) have their own filter and are hidden by default.

import { byId, clear, h } from "../dom.js";
import { has, t } from "../i18n.js";
import {
  clipName,
  commandName,
  errorText,
  hotspotReason,
  relayName,
  sourceText,
  time,
} from "../format.js";
import { store } from "../store.js";

const SHOWN = 200;
const SKIP = new Set(["kind", "seq", "ts", "type", "event", "level", "timestamp"]);
const OWN_EVENT = new Set(["relay.set", "relay.auto", "pa.play", "pa.stop"]);
/** Commands whose success shows as an event of its own (relay.switched, pa.started ...). */
const QUIET = new Set(["done", "accepted"]);

function category(record) {
  if (record.kind === "log") return "log";
  const type = String(record.type || "");
  if (type === "command") return "command";
  if (type.startsWith("relay")) return "relay";
  if (type.startsWith("pa")) return "pa";
  if (type.startsWith("hotspot") || type.startsWith("uplink")) return "hotspot";
  return "other";
}

function rest(record) {
  return Object.entries(record)
    .filter(([key, value]) => !SKIP.has(key) && value !== null && value !== undefined)
    .map(([key, value]) => `${key}=${typeof value === "object" ? JSON.stringify(value) : value}`)
    .join(" ");
}

function stateWord(state) {
  return t(has(`hotspot.${state}`) ? `hotspot.${state}` : "hotspot.unknown");
}

function paReason(reason) {
  return t(has(`pareason.${reason}`) ? `pareason.${reason}` : "pareason.unknown");
}

function commandLine(record) {
  const command = commandName(record.command);
  const status = has(`events.command_${record.status}`) ? record.status : "failed";
  const reason = record.error
    ? errorText({ code: record.error, detail: record.detail })
    : t("err.unknown", { code: "?" });
  return t(`events.command_${status}`, { command, reason });
}

/** The sentence of one event, without its source and time. */
function sentence(record) {
  switch (record.type) {
    case "command":
      return commandLine(record);
    case "relay.switched":
      return t(record.on ? "events.relay_on" : "events.relay_off", {
        relay: relayName(record.relay),
      });
    case "hotspot.state":
    case "uplink.state": {
      const reason = record.state === "up" ? null : hotspotReason(record);
      const name = record.label || (record.hotspot ? record.hotspot : t("wifi.uplink"));
      return t(reason ? "events.hotspot_state_reason" : "events.hotspot_state", {
        name,
        to: stateWord(record.state),
        reason,
      });
    }
    case "pa.started":
      return t(record.resumed ? "events.pa_resumed" : "events.pa_started", {
        clip: clipName(record.clip) || record.url,
      });
    case "pa.finished":
      return t(record.stopped ? "events.pa_stopped" : "events.pa_finished", {
        clip: clipName(record.clip),
      });
    case "pa.failed":
      return t("events.pa_failed", { clip: clipName(record.clip), reason: paReason(record.reason) });
    case "pa.preempted":
      return t("events.pa_preempted", { clip: clipName(record.clip) });
    case "pa.play":
      return t("events.pa_play", { clip: clipName(record.clip) });
    case "hotspots.icmp_not_permitted":
      return t("events.icmp");
    case "outbox.corrupt":
      return t("events.outbox_corrupt");
    case "outbox.dropped":
      return t("events.outbox_dropped");
    case "telemetry":
      return t("events.telemetry");
    default:
      return t("events.other");
  }
}

function line(record) {
  if (record.kind === "log") return `${record.event ?? ""} ${rest(record)}`.trim();
  const what = sentence(record);
  return record.source ? t("events.line", { what, source: sourceText(record.source) }) : what;
}

/** Whether ``record`` is listed under the filter ``wanted`` ("" = everything but logs). */
function listed(record, cat, wanted) {
  if (wanted) return cat === wanted;
  if (cat === "log") return false;
  const quietCommand =
    cat === "command" && QUIET.has(record.status) && OWN_EVENT.has(record.command);
  return !quietCommand;
}

export function mount() {
  const kind = byId("ev-kind");
  const text = byId("ev-text");
  kind.addEventListener("change", render);
  text.addEventListener("input", render);

  function render() {
    const wanted = kind.value;
    const needle = text.value.trim().toLowerCase();
    const list = clear(byId("ev-list"));
    let shown = 0;
    let matched = 0;
    for (let i = store.records.length - 1; i >= 0; i -= 1) {
      const record = store.records[i];
      const cat = category(record);
      if (!listed(record, cat, wanted)) continue;
      const words = line(record);
      const label = record.kind === "log" ? record.level || "log" : record.type || "?";
      if (needle && !`${words} ${JSON.stringify(record)}`.toLowerCase().includes(needle)) {
        continue;
      }
      matched += 1;
      if (shown >= SHOWN) continue;
      shown += 1;
      list.append(
        h(
          "li",
          { class: `ev ev-${cat}`, dataset: { type: label, category: cat } },
          h("span", { class: `ev-mark cat-${cat}`, "aria-hidden": "true" }),
          h(
            "span",
            { class: "ev-text" },
            h("span", { class: "ev-words", text: words }),
            " — ",
            h("time", { class: "muted", text: time(record.ts || record.timestamp) }),
          ),
        ),
      );
    }
    byId("ev-count").textContent = t("events.count", { shown, n: matched });
    if (!shown) list.append(h("li", { class: "muted", text: t("events.none") }));
  }

  return { render };
}
