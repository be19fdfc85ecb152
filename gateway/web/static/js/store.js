// What the page knows: the latest snapshot of each component, recent events and log lines,
// and a short history of each hotspot's measurements.
//
// The server sends snapshots, not deltas, so applying one is a plain replace. The hotspot
// history exists only in the page: it is built from the snapshots that arrive over the
// WebSocket while the page is open, one point per completed probe cycle.

const MAX_RECORDS = 500;
export const HISTORY_POINTS = 60;

export const store = {
  state: {},
  records: [], // {kind: "event"|"log", seq?, ts, type?, ...}
  lastSeq: null,
  history: {}, // hotspot name -> [{ts, p50, p95, loss, state}]
  clips: [],
};

const listeners = new Set();

export function subscribe(listener) {
  listeners.add(listener);
}

function changed(what) {
  for (const listener of listeners) listener(what);
}

function recordHistory(snapshot) {
  const hotspots = snapshot?.hotspots || {};
  for (const [name, view] of Object.entries(hotspots)) {
    const points = (store.history[name] ||= []);
    const stamp = view.checked_at ?? view.cycles ?? null;
    const last = points[points.length - 1];
    if (last && last.stamp === stamp) continue; // the same cycle, republished
    points.push({
      stamp,
      ts: view.checked_at || new Date().toISOString(),
      p50: view.rtt_ms?.p50 ?? null,
      p95: view.rtt_ms?.p95 ?? null,
      loss: view.loss_pct ?? null,
      state: view.state,
    });
    if (points.length > HISTORY_POINTS) points.splice(0, points.length - HISTORY_POINTS);
  }
  for (const name of Object.keys(store.history)) {
    if (!(name in hotspots)) delete store.history[name];
  }
}

/** Replace everything (GET /api/v1/state or the WebSocket hello). */
export function setAll(state) {
  store.state = { ...(state || {}) };
  if (store.state.hotspots) recordHistory(store.state.hotspots);
  changed("all");
}

/** One component's new snapshot. */
export function setComponent(component, snapshot) {
  store.state = { ...store.state, [component]: snapshot };
  const connected = snapshot?.link?.connected;
  if (component === "system" && typeof connected === "boolean") {
    // The system snapshot is the live source of the link state (every 30 s at least).
    store.state.link = { ...store.state.link, online: connected };
  }
  if (component === "hotspots") recordHistory(snapshot);
  changed(component);
}

function trim() {
  if (store.records.length > MAX_RECORDS) {
    store.records.splice(0, store.records.length - MAX_RECORDS);
  }
}

/** Events from GET /api/v1/events or the WebSocket; duplicates (same seq) are dropped. */
export function addEvents(events) {
  let added = 0;
  for (const event of events) {
    if (typeof event.seq === "number") {
      if (store.lastSeq !== null && event.seq <= store.lastSeq) continue;
      store.lastSeq = event.seq;
    }
    store.records.push({ kind: "event", ...event });
    added += 1;
  }
  if (added) {
    trim();
    changed("records");
  }
}

export function addLog(record) {
  store.records.push({ kind: "log", ...record });
  trim();
  changed("records");
}

export function setClips(clips) {
  store.clips = Array.isArray(clips) ? clips : [];
  changed("clips");
}

export function reset() {
  store.state = {};
  store.records = [];
  store.lastSeq = null;
  store.history = {};
  store.clips = [];
}
