// Events and logs: what the gateway did and said, newest first, live, filterable by kind
// and by any text in the record.

import { byId, clear, h } from "../dom.js";
import { has, t } from "../i18n.js";
import { sourceText, time } from "../format.js";
import { store } from "../store.js";

const SHOWN = 200;
const SKIP = new Set(["kind", "seq", "ts", "type", "event", "level", "timestamp"]);

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
  return has(`hotspot.${state}`) ? t(`hotspot.${state}`) : String(state ?? "?");
}

function relayName(name) {
  return store.state.relays?.relays?.[name]?.label || name;
}

function summary(record) {
  switch (record.kind === "log" ? "log" : record.type) {
    case "command": {
      const text = t("events.command", {
        command: record.command ?? "?",
        status: t(`status.${record.status}`),
        source: sourceText(record.source),
      });
      return record.error ? `${text} (${record.error})` : text;
    }
    case "relay.switched":
      return t(record.on ? "events.relay_on" : "events.relay_off", {
        relay: relayName(record.relay),
        source: sourceText(record.source),
      });
    case "hotspot.state":
    case "uplink.state":
      return t("events.hotspot_state", {
        name: record.label || record.hotspot || t("wifi.uplink"),
        from: stateWord(record.previous),
        to: stateWord(record.state),
        reason: record.reason ? ` — ${record.reason}` : "",
      });
    case "log":
      return `${record.event ?? ""} ${rest(record)}`.trim();
    default:
      return rest(record);
  }
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
      if (wanted && cat !== wanted) continue;
      const line = summary(record);
      const label = record.kind === "log" ? record.level || "log" : record.type || "?";
      if (needle && !`${label} ${line} ${JSON.stringify(record)}`.toLowerCase().includes(needle)) {
        continue;
      }
      matched += 1;
      if (shown >= SHOWN) continue;
      shown += 1;
      list.append(
        h(
          "li",
          { class: `ev ev-${cat}`, dataset: { type: label, category: cat } },
          h("time", { class: "muted small", text: time(record.ts || record.timestamp) }),
          h("span", { class: `badge cat-${cat}`, text: String(label) }),
          h("span", { class: "ev-text", text: line }),
        ),
      );
    }
    byId("ev-count").textContent = t("events.count", { shown, n: matched });
    if (!shown) list.append(h("li", { class: "muted", text: t("events.none") }));
  }

  return { render };
}
