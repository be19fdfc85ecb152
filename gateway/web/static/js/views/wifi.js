// Wifi: each hotspot's state, latency p50/p95, loss, clients and availability, with a
// latency history the page collects from the live snapshots while it is open.

import { byId, clear, h } from "../dom.js";
import { has, num, t } from "../i18n.js";
import { hotspotReason, ms, pct, showReply, time } from "../format.js";
import { historyChart } from "../chart.js";
import { store } from "../store.js";

const cards = new Map();

function stateText(state) {
  return t(has(`hotspot.${state}`) ? `hotspot.${state}` : "hotspot.unknown");
}

function availability(value) {
  if (!value || (value["1h"] == null && value["24h"] == null)) return "—";
  return `${pct(value["1h"])} / ${pct(value["24h"])}`;
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
  const reason = hotspotReason(view);
  if (reason && view.state !== "up") rows.push([t("wifi.reason"), reason]);
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
      h("h2", { dataset: { user: "" }, text: view.label || name }),
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
  byId("wifi-probe").addEventListener("click", async (event) => {
    const line = byId("wifi-reply");
    const reply = await ctx.run("hotspots.probe", {}, line, event.currentTarget);
    if (reply?.status !== "done") return;
    // Each hotspot's state after the check, by its label, next to the button.
    const hotspots = store.state.hotspots?.hotspots || {};
    const results = Object.entries(reply.result?.hotspots || {}).map(([name, report]) => {
      const said = hotspotReason(report);
      const state = stateText(report.state);
      return t("wifi.probe_result", {
        name: hotspots[name]?.label || name,
        state: said && report.state !== "up" ? `${state} (${said})` : state,
      });
    });
    showReply(line, reply);
    if (results.length) line.textContent = `${line.textContent}\n${results.join("\n")}`;
  });
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
