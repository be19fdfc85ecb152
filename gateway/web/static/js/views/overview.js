// Overview: is the gateway reaching the commune, is its clock right, how much is waiting
// to go up, and is every part of the daemon healthy.

import { byId, clear, h } from "../dom.js";
import { has, num, t } from "../i18n.js";
import { duration, showError, showInfo } from "../format.js";
import * as api from "../api.js";
import { store } from "../store.js";

function tile(id, text, tone) {
  const el = byId(id);
  el.dataset.tone = tone;
  el.querySelector(".tile-value").textContent = text;
}

function online(state) {
  if (typeof state.link?.online === "boolean") return state.link.online;
  if (typeof state.system?.link?.connected === "boolean") return state.system.link.connected;
  return null;
}

export function mount() {
  const form = byId("password-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const reply = form.querySelector(".reply");
    const current = byId("pw-current").value;
    const next = byId("pw-new").value;
    if (next !== byId("pw-new2").value) {
      showInfo(reply, t("setup.mismatch"), "error");
      return;
    }
    const button = form.querySelector("button");
    button.disabled = true;
    showInfo(reply, t("account.changing"));
    try {
      await api.changePassword(current, next);
      form.reset();
      showInfo(reply, t("account.changed"));
    } catch (error) {
      if (error.status === 401 || error.status === 403) {
        showInfo(reply, t("account.wrong_current"), "error");
      } else {
        showError(reply, error);
      }
    } finally {
      button.disabled = false;
    }
  });
  return { render };

  function render() {
    const state = store.state;
    const link = online(state);
    tile(
      "ov-link",
      link === null ? "—" : t(link ? "overview.online" : "overview.offline"),
      link === null ? "unknown" : link ? "good" : "bad",
    );
    const synced = state.system?.clock_synced;
    tile(
      "ov-clock",
      synced === undefined ? "—" : t(synced ? "overview.synced" : "overview.unsynced"),
      synced === undefined ? "unknown" : synced ? "good" : "warn",
    );
    const outbox = state.system?.outbox;
    const depth = typeof outbox === "number" ? outbox : outbox?.depth;
    const total =
      depth && typeof depth === "object"
        ? Object.values(depth).reduce((a, b) => a + (Number(b) || 0), 0)
        : depth;
    tile(
      "ov-outbox",
      total === undefined || total === null ? "—" : t("overview.records", { n: num(total) }),
      total ? "warn" : "good",
    );
    const relays = Object.values(state.relays?.relays || {});
    tile(
      "ov-relays",
      relays.length
        ? t("overview.relays_on", { on: relays.filter((r) => r.on).length, n: relays.length })
        : "—",
      "neutral",
    );
    const hotspots = Object.values(state.hotspots?.hotspots || {});
    const up = hotspots.filter((x) => x.state === "up" || x.state === "degraded").length;
    tile(
      "ov-hotspots",
      hotspots.length ? t("overview.hotspots_up", { up, n: hotspots.length }) : "—",
      !hotspots.length ? "neutral" : up === hotspots.length ? "good" : "bad",
    );
    tile("ov-uptime", duration(state.system?.uptime_s), "neutral");

    const list = clear(byId("ov-health"));
    const health = state.health || {};
    const names = Object.keys(health).sort((a, b) => Number(health[b]?.critical) - Number(health[a]?.critical) || a.localeCompare(b));
    for (const name of names) {
      const part = health[name] || {};
      const ok = part.healthy !== false;
      const details = [t(has(`health.${part.state}`) ? `health.${part.state}` : "health.unknown")];
      if (part.restarts) details.push(t("overview.restarts", { n: part.restarts }));
      if (part.critical) details.push(t("overview.critical"));
      if (part.last_error) details.push(t("overview.problem"));
      list.append(
        h(
          "li",
          { class: "health-row", dataset: { component: name, healthy: String(ok) } },
          h("span", { class: `dot ${ok ? "dot-good" : "dot-bad"}`, "aria-hidden": "true" }),
          h("strong", { text: t(has(`component.${name}`) ? `component.${name}` : "component.other") }),
          h("span", { class: "muted", text: details.join(" · ") }),
        ),
      );
    }
    if (!names.length) list.append(h("li", { class: "muted", text: t("overview.no_health") }));
    // A daemon without the backup route hides the link instead of offering a download
    // that fails.
    byId("ov-backup-block").hidden = state.features?.backup === false;
    const gateway = state.gateway || {};
    byId("ov-version").textContent = t("overview.version", {
      id: gateway.id || "—",
      v: gateway.version || state.system?.version || "—",
    });
  }
}
