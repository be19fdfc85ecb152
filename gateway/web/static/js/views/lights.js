// Lights and power: every relay with its label, state and mode; switch it, switch it on
// for N minutes, or hand it back to its schedule (relay.auto). Each card has its own
// status line under its buttons, so the answer to a tap shows where the finger is.
//
// The amplifier's relay belongs to the loudspeakers (pa.amp_relay): it is shown with its
// state and who runs it, without buttons, since the PA switches it on and off itself.
//
// Cards are kept per relay and updated in place, so a live update from another phone or
// the scheduler never wipes the minutes someone is typing.

import { byId, h } from "../dom.js";
import { t } from "../i18n.js";
import { sourceText, time } from "../format.js";
import { store } from "../store.js";

const cards = new Map();

function minutesOf(input) {
  const value = Math.round(Number(input.value));
  return Number.isFinite(value) && value >= 1 && value <= 1440 ? value : null;
}

function buildCard(ctx, name) {
  const reply = h("p", { class: "reply relay-reply", role: "status", "aria-live": "polite" });
  const minutes = h("input", {
    type: "number",
    min: "1",
    max: "1440",
    value: "30",
    inputmode: "numeric",
    class: "minutes",
    "aria-label": t("lights.minutes_label"),
  });
  const parts = {
    title: h("h2", { class: "relay-label", dataset: { user: "" } }),
    state: h("span", { class: "relay-state badge" }),
    mode: h("span", { class: "relay-mode badge" }),
    detail: h("p", { class: "muted small relay-detail" }),
    toggle: h("button", { type: "button", class: "relay-toggle" }),
    forButton: h("button", { type: "button", class: "relay-for" }),
    auto: h("button", { type: "button", class: "relay-auto" }),
    owned: h("p", { class: "hint relay-owned" }, h("span", { class: "owned-text" }), " ",
      h("a", { href: "#/pa", class: "owned-link" })),
    controls: null,
    minutes,
    reply,
  };
  parts.toggle.addEventListener("click", () => {
    const relay = store.state.relays?.relays?.[name];
    ctx.run("relay.set", { relay: name, on: !relay?.on }, reply, parts.toggle);
  });
  minutes.addEventListener("input", () => {
    parts.forButton.textContent = t("lights.on_for", { n: minutesOf(minutes) ?? "…" });
  });
  parts.forButton.addEventListener("click", () => {
    const value = minutesOf(minutes);
    if (value === null) {
      ctx.say(reply, t("lights.minutes_range"), "error");
      minutes.focus();
      return;
    }
    ctx.run("relay.set", { relay: name, on: true, for_s: value * 60 }, reply, parts.forButton);
  });
  parts.auto.addEventListener("click", () =>
    ctx.run("relay.auto", { relay: name }, reply, parts.auto),
  );
  parts.controls = h(
    "div",
    { class: "relay-controls" },
    h("div", { class: "row" }, parts.toggle, parts.auto),
    h("div", { class: "row" }, minutes, parts.forButton),
  );
  const el = h(
    "article",
    { class: "card relay", dataset: { relay: name } },
    h("div", { class: "card-head" }, parts.title, parts.state),
    h("div", { class: "row" }, parts.mode, parts.detail),
    parts.owned,
    parts.controls,
    reply,
  );
  return { el, parts };
}

function scheduled(name) {
  const rows = store.state.schedules?.schedules;
  return !Array.isArray(rows) || rows.some((row) => row.relay === name);
}

function update(card, name, relay) {
  const { el, parts } = card;
  const owned = store.state.owners?.[name] === "pa";
  el.dataset.on = String(Boolean(relay.on));
  el.dataset.owner = owned ? "pa" : "";
  el.classList.toggle("is-on", Boolean(relay.on));
  parts.title.textContent = relay.label || name;
  parts.state.textContent = t(relay.on ? "lights.on" : "lights.off");
  let mode = relay.mode === "manual" ? "lights.manual" : "lights.schedule";
  if (relay.mode !== "manual" && !scheduled(name)) mode = "lights.no_schedule";
  if (owned) mode = "component.pa";
  parts.mode.textContent = t(mode);
  parts.mode.dataset.mode = owned ? "pa" : relay.mode || "schedule";
  const bits = [];
  if (relay.until) bits.push(t("lights.until", { time: time(relay.until) }));
  if (relay.changed_at) bits.push(t("lights.changed", { time: time(relay.changed_at) }));
  if (relay.source && !owned) bits.push(t("lights.by", { source: sourceText(relay.source) }));
  if (relay.pending !== null && relay.pending !== undefined) {
    bits.push(t(relay.pending ? "lights.pending_on" : "lights.pending_off"));
  }
  parts.detail.textContent = bits.join(" · ");
  parts.owned.hidden = !owned;
  parts.controls.hidden = owned;
  parts.owned.querySelector(".owned-text").textContent = t("lights.amp_owned");
  parts.owned.querySelector(".owned-link").textContent = t("lights.amp_link");
  parts.toggle.textContent = t(relay.on ? "lights.turn_off" : "lights.turn_on");
  parts.toggle.className = `relay-toggle ${relay.on ? "btn-off" : "btn-primary"}`;
  parts.forButton.textContent = t("lights.on_for", { n: minutesOf(parts.minutes) ?? "…" });
  parts.minutes.setAttribute("aria-label", t("lights.minutes_label"));
  parts.auto.textContent = t("lights.auto");
  parts.auto.disabled = relay.mode !== "manual";
}

export function mount(ctx) {
  const list = byId("relay-list");
  function render() {
    const relays = store.state.relays?.relays || {};
    for (const [name, card] of cards) {
      if (!(name in relays)) {
        card.el.remove();
        cards.delete(name);
      }
    }
    for (const [name, relay] of Object.entries(relays)) {
      let card = cards.get(name);
      if (!card) {
        card = buildCard(ctx, name);
        cards.set(name, card);
        list.append(card.el);
      }
      update(card, name, relay);
    }
    byId("relay-empty").hidden = cards.size > 0;
  }
  return { render };
}
