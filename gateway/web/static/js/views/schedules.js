// Schedules: the relay intervals and the broadcasts, edited here and saved as ONE
// schedule.set, so the gateway swaps the whole set atomically or refuses it whole. The
// reply's error.message lists every problem with its place (e.g. "relays.2.on: ...").
//
// While someone edits, live updates do not overwrite the form; "Revert" reloads it.

import { byId, clear, h, setOptions } from "../dom.js";
import { t } from "../i18n.js";
import { time } from "../format.js";
import { store } from "../store.js";

const DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const PRIORITIES = ["scheduled", "announcement", "background"];

let relayRows = [];
let broadcastRows = [];
let dirty = false;
let known = false;

function copy(list) {
  return (Array.isArray(list) ? list : []).map((item) => ({ ...item }));
}

function daysPicker(row) {
  const chosen = new Set(row.days || DAYS);
  return h(
    "fieldset",
    { class: "days" },
    h("legend", { class: "small", text: t("schedules.days") }),
    DAYS.map((day) => {
      const box = h("input", { type: "checkbox", value: day, checked: chosen.has(day) });
      box.addEventListener("change", () => {
        if (box.checked) chosen.add(day);
        else chosen.delete(day);
        row.days = DAYS.filter((d) => chosen.has(d));
        dirty = true;
      });
      return h("label", { class: "day" }, box, h("span", { text: t(`day.${day}`) }));
    }),
  );
}

function textField(row, key, labelKey, placeholder) {
  const input = h("input", {
    type: "text",
    value: row[key] ?? "",
    placeholder,
    autocapitalize: "off",
    spellcheck: "false",
    dataset: { field: key },
  });
  input.addEventListener("input", () => {
    row[key] = input.value.trim();
    dirty = true;
  });
  return h("label", { class: "field" }, h("span", { class: "small", text: t(labelKey) }), input);
}

function selectField(row, key, labelKey, options) {
  const select = h("select", { dataset: { field: key } });
  setOptions(select, options);
  if (row[key] !== undefined && !options.some((o) => o.value === row[key])) {
    select.append(h("option", { value: row[key], text: row[key] }));
  }
  select.value = row[key] ?? options[0]?.value ?? "";
  row[key] = select.value;
  select.addEventListener("change", () => {
    row[key] = select.value;
    dirty = true;
  });
  return h("label", { class: "field" }, h("span", { class: "small", text: t(labelKey) }), select);
}

function removeButton(list, row, rerender) {
  const button = h("button", { type: "button", class: "btn-small", text: t("schedules.remove") });
  button.addEventListener("click", () => {
    list.splice(list.indexOf(row), 1);
    dirty = true;
    rerender();
  });
  return button;
}

function renderRows() {
  const relayNames = Object.entries(store.state.relays?.relays || {}).map(([name, r]) => ({
    value: name,
    label: r.label ? `${r.label} (${name})` : name,
  }));
  const relays = clear(byId("sched-relays"));
  relayRows.forEach((row, index) => {
    relays.append(
      h(
        "article",
        { class: "card sched-row", dataset: { index: String(index) } },
        selectField(row, "relay", "schedules.relay", relayNames),
        h(
          "div",
          { class: "row" },
          textField(row, "on", "schedules.on", "sunset+10m"),
          textField(row, "off", "schedules.off", "22:30"),
        ),
        daysPicker(row),
        removeButton(relayRows, row, renderRows),
      ),
    );
  });
  if (!relayRows.length) relays.append(h("p", { class: "muted", text: t("schedules.none") }));

  const clipNames = store.clips.map((clip) => ({ value: clip.name, label: clip.name }));
  const broadcasts = clear(byId("sched-broadcasts"));
  broadcastRows.forEach((row, index) => {
    broadcasts.append(
      h(
        "article",
        { class: "card sched-row", dataset: { index: String(index) } },
        h(
          "div",
          { class: "row" },
          textField(row, "at", "schedules.at", "06:00"),
          clipNames.length
            ? selectField(row, "clip", "schedules.clip", clipNames)
            : textField(row, "clip", "schedules.clip", "chime"),
        ),
        selectField(
          row,
          "priority",
          "pa.priority",
          PRIORITIES.map((p) => ({ value: p, label: t(`priority.${p}`) })),
        ),
        daysPicker(row),
        removeButton(broadcastRows, row, renderRows),
      ),
    );
  });
  if (!broadcastRows.length) {
    broadcasts.append(h("p", { class: "muted", text: t("schedules.none") }));
  }
}

/**
 * Load the schedules in force. Without their lists (an older daemon sends only counts)
 * saving is refused: schedule.set replaces everything, and an editor that never saw the
 * current set would silently wipe it.
 */
function load() {
  const schedules = store.state.schedules || {};
  const relays = Array.isArray(schedules.schedules) ? schedules.schedules : schedules.relays;
  known = Array.isArray(relays);
  relayRows = copy(relays);
  broadcastRows = copy(Array.isArray(schedules.broadcasts) ? schedules.broadcasts : []);
  dirty = false;
  byId("sched-save").disabled = !known;
  byId("sched-unknown").hidden = known;
  renderRows();
}

/** What schedule.set gets: only the keys the protocol knows, days only when not all. */
function payload() {
  const days = (row) => (row.days && row.days.length !== 7 ? { days: row.days } : {});
  return {
    schedules: relayRows.map((row) => ({ relay: row.relay, on: row.on, off: row.off, ...days(row) })),
    broadcasts: broadcastRows.map((row) => {
      const out = { at: row.at, clip: row.clip, priority: row.priority || "scheduled", ...days(row) };
      if (row.volume !== undefined && row.volume !== null && row.volume !== "") {
        out.volume = Number(row.volume);
      }
      return out;
    }),
  };
}

export function mount(ctx) {
  const reply = byId("sched-reply");
  byId("sched-add-relay").addEventListener("click", () => {
    const first = Object.keys(store.state.relays?.relays || {})[0] || "";
    relayRows.push({ relay: first, on: "sunset", off: "22:00" });
    dirty = true;
    renderRows();
  });
  byId("sched-add-broadcast").addEventListener("click", () => {
    broadcastRows.push({ at: "06:00", clip: store.clips[0]?.name || "", priority: "scheduled" });
    dirty = true;
    renderRows();
  });
  byId("sched-revert").addEventListener("click", () => {
    load();
    ctx.say(reply, t("schedules.reverted"), "info");
  });
  byId("sched-save").addEventListener("click", async (event) => {
    if (!known) return;
    const button = event.currentTarget;
    const result = await ctx.run("schedule.set", payload(), reply, button);
    if (result?.status === "done") dirty = false;
  });

  function info() {
    const s = store.state.system?.schedules || {};
    const bits = [];
    if (s.next_change) bits.push(t("schedules.next_change", { time: time(s.next_change) }));
    if (s.holding) bits.push(t("schedules.holding"));
    if (s.source) bits.push(t("schedules.source", { source: t(`schedules.source_${s.source}`) }));
    byId("sched-info").textContent = bits.join(" · ");
  }

  return {
    render(what) {
      info();
      if (!dirty && (what === "all" || what === "schedules" || what === "lang")) load();
      else if (what === "lang" || what === "clips") renderRows();
    },
    show() {
      info();
      if (!dirty) load();
    },
  };
}
