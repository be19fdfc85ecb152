// Schedules: the relay intervals and the broadcasts, edited here and saved as ONE
// schedule.set, so the gateway swaps the whole set atomically or refuses it whole. A
// refusal's error.detail.problems names each wrong row (from 1) and key with a reason
// code: the row is marked in place with the reason in words.
//
// Times read as people say them: "18:30", "hoàng hôn", "bình minh - 15 phút" (the gateway
// takes these words as they are); the gateway's own tokens ("sunset+10m") are shown in the
// page's language. An off time earlier than the on time is the next morning (one row).
//
// While someone edits, live updates do not overwrite the form; "Revert" reloads it.

import { byId, clear, h, setOptions } from "../dom.js";
import { has, t } from "../i18n.js";
import { clipName, problemText, showReply, time } from "../format.js";
import { store } from "../store.js";

const DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const PRIORITIES = ["scheduled", "announcement", "background"];

let relayRows = [];
let broadcastRows = [];
let dirty = false;
let known = false;
let problems = [];

const TOKEN = /^(sunset|sunrise)(?:([+-])(\d{1,4})m)?$/;

/** "sunset+10m" -> "hoàng hôn + 10 phút" (any other text stays as it is). */
function spoken(value) {
  const match = TOKEN.exec(String(value ?? "").trim());
  if (!match) return value ?? "";
  const word = t(`schedules.${match[1]}`);
  return match[2] ? `${word} ${match[2]} ${match[3]} ${t("schedules.minutes")}` : word;
}

/** Rough minute of the day, enough to tell an interval that ends the next morning. */
function minuteOf(value) {
  const text = String(value ?? "").trim().toLowerCase();
  const clock = /^(\d{1,2}):(\d{2})$/.exec(text);
  if (clock) return Number(clock[1]) * 60 + Number(clock[2]);
  if (/^(sunset|hoàng hôn)/.test(text)) return 18 * 60;
  if (/^(sunrise|bình minh)/.test(text)) return 6 * 60;
  return null;
}

function overnight(row) {
  const on = minuteOf(row.on);
  const off = minuteOf(row.off);
  return on !== null && off !== null && off < on;
}

function fillTimes() {
  const words = [t("schedules.sunset"), t("schedules.sunrise")];
  const minutes = t("schedules.minutes");
  const choices = [
    ...words,
    `${words[0]} + 15 ${minutes}`,
    `${words[0]} - 15 ${minutes}`,
    `${words[1]} - 15 ${minutes}`,
    "05:00",
    "18:00",
    "22:00",
  ];
  const list = clear(byId("sched-times"));
  for (const value of choices) list.append(h("option", { value }));
}

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

function textField(row, key, labelKey, placeholder, onInput) {
  const input = h("input", {
    type: "text",
    value: row[key] ?? "",
    placeholder,
    autocapitalize: "off",
    spellcheck: "false",
    list: "sched-times",
    dataset: { field: key },
  });
  input.addEventListener("input", () => {
    row[key] = input.value.trim();
    dirty = true;
    if (onInput) onInput();
  });
  return h("label", { class: "field" }, h("span", { class: "small", text: t(labelKey) }), input);
}

function selectField(row, key, labelKey, options) {
  const select = h("select", { dataset: { field: key } });
  setOptions(select, options);
  if (row[key] !== undefined && row[key] !== "" && !options.some((o) => o.value === row[key])) {
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

/** The problems of one list's row (1-based), from the last refusal. */
function rowProblems(list, row) {
  return problems.filter((p) => p.row === row && listOf(p.field) === list);
}

function listOf(field) {
  return String(field || "").startsWith("broadcasts") ? "broadcasts" : "schedules";
}

/** Mark a row refused by the gateway: red border, the reason under it, its inputs flagged. */
function marked(article, list, index) {
  const found = rowProblems(list, index + 1);
  if (!found.length) return article;
  article.classList.add("invalid");
  for (const problem of found) {
    const field = article.querySelector(`[data-field="${problem.key}"]`);
    if (field) field.setAttribute("aria-invalid", "true");
    const reason = problemText(problem);
    article.append(h("p", { class: "row-error", text: t("schedules.row_error", { reason }) }));
  }
  return article;
}

function renderRows() {
  const relayNames = Object.entries(store.state.relays?.relays || {})
    .filter(([name]) => store.state.owners?.[name] !== "pa")
    .map(([name, r]) => ({ value: name, label: r.label || name }));
  const relays = clear(byId("sched-relays"));
  relayRows.forEach((row, index) => {
    const note = h("p", { class: "hint overnight", text: t("schedules.overnight") });
    const check = () => {
      note.hidden = !overnight(row);
    };
    check();
    relays.append(
      marked(
        h(
          "article",
          { class: "card sched-row", dataset: { index: String(index) } },
          selectField(row, "relay", "schedules.relay", relayNames),
          h(
            "div",
            { class: "row" },
            textField(row, "on", "schedules.on", t("schedules.sunset"), check),
            textField(row, "off", "schedules.off", "22:30", check),
          ),
          note,
          daysPicker(row),
          removeButton(relayRows, row, renderRows),
        ),
        "schedules",
        index,
      ),
    );
  });
  if (!relayRows.length) relays.append(h("p", { class: "muted", text: t("schedules.none") }));

  const clipNames = store.clips.map((clip) => ({ value: clip.name, label: clipName(clip.name) }));
  const broadcasts = clear(byId("sched-broadcasts"));
  broadcastRows.forEach((row, index) => {
    broadcasts.append(
      marked(
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
        "broadcasts",
        index,
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
  relayRows = copy(relays).map((row) => ({ ...row, on: spoken(row.on), off: spoken(row.off) }));
  problems = [];
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
    const first =
      Object.keys(store.state.relays?.relays || {}).find((n) => store.state.owners?.[n] !== "pa") || "";
    relayRows.push({ relay: first, on: spoken("sunset"), off: "22:00" });
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
    fillTimes();
    ctx.say(reply, t("schedules.reverted"), "info");
  });
  byId("sched-save").addEventListener("click", async (event) => {
    if (!known) return;
    const button = event.currentTarget;
    const result = await ctx.run("schedule.set", payload(), reply, button);
    if (result?.status === "done") {
      dirty = false;
      problems = [];
      renderRows();
      return;
    }
    const detail = result?.error?.detail;
    problems = detail ? (Array.isArray(detail.problems) ? detail.problems : [detail]) : [];
    renderRows();
    if (problems.some((p) => p.row)) {
      showReply(reply, result);
      byId("page-schedules").querySelector(".sched-row.invalid")?.scrollIntoView({
        block: "center",
        behavior: "instant",
      });
    }
  });

  function info() {
    const s = store.state.system?.schedules || {};
    const bits = [];
    if (s.next_change) bits.push(t("schedules.next_change", { time: time(s.next_change) }));
    if (s.holding) bits.push(t("schedules.holding"));
    if (has(`schedules.source_${s.source}`)) {
      bits.push(t("schedules.source", { source: t(`schedules.source_${s.source}`) }));
    }
    byId("sched-info").textContent = bits.join(" · ");
  }

  return {
    render(what) {
      info();
      if (what === "all" || what === "lang") fillTimes();
      if (!dirty && (what === "all" || what === "schedules" || what === "lang")) load();
      else if (what === "lang" || what === "clips") renderRows();
    },
    show() {
      info();
      fillTimes();
      if (!dirty) load();
    },
  };
}
