// Wifi: each hotspot's state, latency p50/p95, loss, clients and availability, with a
// latency history the page collects from the live snapshots while it is open.

import { byId, clear, h } from "../dom.js";
import { has, num, t } from "../i18n.js";
import { ms, pct, time } from "../format.js";
import { historyChart } from "../chart.js";
import { store } from "../store.js";

const cards = new Map();

function stateText(state) {
  return has(`hotspot.${state}`) ? t(`hotspot.${state}`) : String(state ?? "—");
}

function availability(value) {
  if (!value) return "—";
  const parts = [];
  for (const key of ["1h", "24h"]) {
    if (value[key] !== null && value[key] !== undefined) {
      parts.push(`${key}: ${pct(value[key])}`);
    }
  }
  return parts.join(" · ") || "—";
}

function facts(view) {
  const rows = [
    [t("wifi.latency"), `${ms(view.rtt_ms?.p50)} / ${ms(view.rtt_ms?.p95)}`],
    [t("wifi.loss"), pct(view.loss_pct)],
    [t("wifi.availability"), availability(view.availability)],
  ];
  if ("clients" in view) {
    rows.push([t("wifi.clients"), view.clients === null ? "—" : num(view.clients)]);
  }
  rows.push([t("wifi.since"), time(view.since)]);
  if (view.reason) rows.push([t("wifi.reason"), view.reason]);
  return h(
    "dl",
    { class: "facts" },
    rows.map(([term, value]) => [h("dt", { text: term }), h("dd", { text: value })]),
  );
}

function fill(el, name, view, withChart) {
  el.dataset.state = view.state || "unknown";
  clear(el);
  el.append(
    h(
      "div",
      { class: "card-head" },
      h("h2", { text: view.label || name }),
      h("span", { class: `badge state-${view.state}`, text: stateText(view.state) }),
    ),
    facts(view),
  );
  if (withChart) {
    const points = store.history[name] || [];
    el.append(historyChart(points, t("wifi.chart", { name: view.label || name })));
  }
}

export function mount(ctx) {
  byId("wifi-probe").addEventListener("click", (event) =>
    ctx.run("hotspots.probe", {}, byId("wifi-reply"), event.currentTarget),
  );
  function render() {
    const snapshot = store.state.hotspots || {};
    const uplink = byId("wifi-uplink");
    if (snapshot.uplink) {
      uplink.hidden = false;
      fill(uplink, t("wifi.uplink"), { ...snapshot.uplink, label: t("wifi.uplink") }, false);
    } else {
      uplink.hidden = true;
    }
    const hotspots = snapshot.hotspots || {};
    const list = byId("hotspot-list");
    for (const [name, card] of cards) {
      if (!(name in hotspots)) {
        card.remove();
        cards.delete(name);
      }
    }
    for (const [name, view] of Object.entries(hotspots)) {
      let card = cards.get(name);
      if (!card) {
        card = h("article", { class: "card hotspot", dataset: { hotspot: name } });
        cards.set(name, card);
        list.append(card);
      }
      fill(card, name, view, true);
    }
    byId("hotspot-empty").hidden = cards.size > 0;
  }
  return { render };
}
