// Lights and power: every relay with its label, state and mode; switch it, switch it on
// for N minutes, or hand it back to its schedule (relay.auto).
//
// Cards are kept per relay and updated in place, so a live update from another phone or
// the scheduler never wipes the minutes someone is typing.

import { byId, h } from "../dom.js";
import { t } from "../i18n.js";
import { sourceText, time } from "../format.js";
import { store } from "../store.js";

const cards = new Map();

function buildCard(ctx, name) {
  const reply = byId("lights-reply");
  const minutes = h("input", {
    type: "number",
    min: "1",
    max: "1440",
    value: "30",
    inputmode: "numeric",
    class: "minutes",
    "aria-label": t("lights.minutes"),
  });
  const parts = {
    title: h("h2", { class: "relay-label" }),
    state: h("span", { class: "relay-state badge" }),
    mode: h("span", { class: "relay-mode badge" }),
    detail: h("p", { class: "muted small relay-detail" }),
    toggle: h("button", { type: "button", class: "btn-primary relay-toggle" }),
    forLabel: h("span", { class: "small" }),
    forButton: h("button", { type: "button", class: "relay-for" }),
    auto: h("button", { type: "button", class: "relay-auto" }),
    minutes,
  };
  parts.toggle.addEventListener("click", () => {
    const relay = store.state.relays?.relays?.[name];
    ctx.run("relay.set", { relay: name, on: !relay?.on }, reply, parts.toggle);
  });
  parts.forButton.addEventListener("click", () => {
    const value = Math.round(Number(minutes.value));
    if (!Number.isFinite(value) || value < 1 || value > 1440) {
      ctx.say(reply, t("lights.minutes_range"), "error");
      minutes.focus();
      return;
    }
    ctx.run("relay.set", { relay: name, on: true, for_s: value * 60 }, reply, parts.forButton);
  });
  parts.auto.addEventListener("click", () =>
    ctx.run("relay.auto", { relay: name }, reply, parts.auto),
  );
  const el = h(
    "article",
    { class: "card relay", dataset: { relay: name } },
    h("div", { class: "card-head" }, parts.title, parts.state),
    h("div", { class: "row" }, parts.mode, parts.detail),
    h("div", { class: "row" }, parts.toggle, parts.auto),
    h("div", { class: "row" }, minutes, parts.forLabel, parts.forButton),
  );
  return { el, parts };
}

function update(card, name, relay) {
  const { el, parts } = card;
  el.dataset.on = String(Boolean(relay.on));
  el.classList.toggle("is-on", Boolean(relay.on));
  parts.title.textContent = relay.label || name;
  parts.state.textContent = t(relay.on ? "lights.on" : "lights.off");
  parts.mode.textContent = t(relay.mode === "manual" ? "lights.manual" : "lights.schedule");
  parts.mode.dataset.mode = relay.mode || "schedule";
  const bits = [];
  if (relay.until) bits.push(t("lights.until", { time: time(relay.until) }));
  if (relay.changed_at) bits.push(t("lights.changed", { time: time(relay.changed_at) }));
  if (relay.source) bits.push(t("lights.by", { source: sourceText(relay.source) }));
  if (relay.pending !== null && relay.pending !== undefined) {
    bits.push(t(relay.pending ? "lights.pending_on" : "lights.pending_off"));
  }
  parts.detail.textContent = bits.join(" · ");
  parts.toggle.textContent = t(relay.on ? "lights.turn_off" : "lights.turn_on");
  parts.forLabel.textContent = t("lights.minutes");
  parts.forButton.textContent = t("lights.on_for");
  parts.minutes.setAttribute("aria-label", t("lights.minutes"));
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
