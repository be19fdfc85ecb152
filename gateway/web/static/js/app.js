// The page's entry point: decides between login and the app, routes between pages
// (#/overview, #/lights, ...), keeps the WebSocket up and re-renders the visible page when
// something changes.
//
// Every action goes through ctx.run -> POST /api/v1/commands (the same Dispatcher as MQTT)
// and its reply's status is shown next to the button that sent it.

import * as api from "./api.js";
import { byId } from "./dom.js";
import { initI18n, lang, onLangChange, setLang, t } from "./i18n.js";
import { showError, showInfo, showReply } from "./format.js";
import { renderBanner } from "./banner.js";
import { Live } from "./live.js";
import {
  addEvents,
  addLog,
  reset,
  setAll,
  setClips,
  setComponent,
  store,
  subscribe,
} from "./store.js";
import * as loginView from "./views/login.js";
import * as overviewView from "./views/overview.js";
import * as lightsView from "./views/lights.js";
import * as paView from "./views/pa.js";
import * as wifiView from "./views/wifi.js";
import * as schedulesView from "./views/schedules.js";
import * as eventsView from "./views/events.js";

const PAGES = ["overview", "lights", "pa", "wifi", "schedules", "events"];
const DEFAULT_PAGE = "overview";
const REFRESH_MS = 20000;

let authenticated = false;
let page = null;
let stale = new Set(PAGES);
let pending = new Set();
let frame = 0;
let refreshTimer = 0;
let gatewayName = null;
const views = {};

const ctx = {
  /**
   * Send one command; show its reply in ``replyEl`` (a status line next to ``button``, so
   * the answer lands where the finger is); resolve with the reply (or null).
   */
  async run(type, args, replyEl, button) {
    if (button) button.disabled = true;
    showInfo(replyEl, t("status.sending"));
    try {
      const reply = await api.command(type, args);
      showReply(replyEl, reply);
      return reply;
    } catch (error) {
      showError(replyEl, error);
      return null;
    } finally {
      if (button) button.disabled = false;
      queueRender("reply");
    }
  },
  say(el, text, status) {
    showInfo(el, text, status);
  },
  /** An in-page confirmation (translated, unlike window.confirm's buttons). */
  confirm(title, text) {
    const dialog = byId("confirm-dialog");
    byId("confirm-title").textContent = title;
    byId("confirm-text").textContent = text;
    return new Promise((resolve) => {
      const done = (answer) => {
        byId("confirm-ok").removeEventListener("click", ok);
        byId("confirm-cancel").removeEventListener("click", cancel);
        dialog.removeEventListener("cancel", cancel);
        if (dialog.open) dialog.close();
        resolve(answer);
      };
      const ok = () => done(true);
      const cancel = () => done(false);
      byId("confirm-ok").addEventListener("click", ok);
      byId("confirm-cancel").addEventListener("click", cancel);
      dialog.addEventListener("cancel", cancel);
      dialog.showModal();
      byId("confirm-cancel").focus();
    });
  },
  enter,
  start,
};

const live = new Live({
  onStatus(status) {
    const conn = byId("conn");
    conn.dataset.state = status;
    conn.dataset.i18n = `conn.${status}`;
    conn.textContent = t(`conn.${status}`);
    conn.hidden = status === "stopped";
    document.body.dataset.conn = status; // stale data is greyed while reconnecting
  },
  onMessage(message) {
    switch (message.kind) {
      case "hello":
        setAll(message.state);
        if (typeof message.last_seq === "number" && message.last_seq !== store.lastSeq) {
          catchUp(); // events that happened while we were away
        }
        break;
      case "state":
        if (message.component) setComponent(message.component, message.snapshot);
        break;
      case "event":
        if (message.event) addEvents([message.event]);
        break;
      case "log":
        if (message.record) addLog(message.record);
        break;
      default:
        break;
    }
  },
  async onDrop() {
    try {
      const info = await api.session();
      if (!info.authenticated) leave(info.setup_required, info.ended);
    } catch {
      // the gateway is unreachable: keep trying to reconnect
    }
  },
});

async function catchUp() {
  try {
    const data = await api.events(store.lastSeq, 500);
    addEvents(data.events || []);
  } catch {
    // shown on the next hello
  }
}

function queueRender(what) {
  pending.add(what);
  if (frame) return;
  frame = requestAnimationFrame(() => {
    frame = 0;
    const batch = pending;
    pending = new Set();
    for (const name of PAGES) if (name !== page) stale.add(name);
    if (!page || !authenticated) return;
    const view = views[page];
    const onlyRecords = batch.size === 1 && batch.has("records");
    if (page === "events") {
      if (batch.has("records") || batch.has("all") || batch.has("lang")) view.render();
      return;
    }
    if (onlyRecords) return;
    for (const what of batch) view.render(what);
    stale.delete(page);
  });
}

function showPage(name) {
  for (const other of ["login", ...PAGES]) byId(`page-${other}`).hidden = other !== name;
  for (const link of document.querySelectorAll("#tabs a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function route() {
  if (!authenticated) return;
  const wanted = location.hash.replace(/^#\/?/, "");
  const name = PAGES.includes(wanted) ? wanted : DEFAULT_PAGE;
  const changed = name !== page;
  page = name;
  showPage(name);
  const view = views[name];
  if (changed || stale.has(name)) {
    view.render("all");
    stale.delete(name);
  }
  if (changed && view.show) view.show();
  clearInterval(refreshTimer);
  if (name === "overview") refreshTimer = setInterval(refreshState, REFRESH_MS);
}

async function refreshState() {
  // Health and the link state change without a snapshot of their own: re-read them.
  try {
    setAll(await api.state());
  } catch {
    // the WebSocket indicator already tells the user
  }
}

function setGatewayName(name) {
  const el = byId("gateway-name");
  gatewayName = name || null;
  if (gatewayName) {
    delete el.dataset.i18n;
    el.textContent = gatewayName;
    document.title = `${gatewayName} — ${t("app.title")}`;
  } else {
    el.dataset.i18n = "app.title";
    el.textContent = t("app.title");
  }
}

/** Ask the server who we are, then show the login, the setup form or the app. */
async function start() {
  let info;
  try {
    info = await api.session();
  } catch {
    byId("loading").hidden = false;
    byId("loading").textContent = t("error.offline");
    setTimeout(start, 3000);
    return;
  }
  byId("loading").hidden = true;
  setGatewayName(info.gateway?.name);
  if (info.authenticated) {
    await enter();
  } else {
    leave(info.setup_required, info.ended);
  }
}

/** Logged in: load the state and the recent events, open the WebSocket, show a page. */
async function enter() {
  if (!api.hasCsrf()) {
    try {
      await api.session();
    } catch {
      // the next command will say what is wrong
    }
  }
  authenticated = true;
  byId("tabs").hidden = false;
  byId("logout").hidden = false;
  try {
    setAll(await api.state());
  } catch {
    // the WebSocket hello brings it
  }
  try {
    const data = await api.events(null, 200);
    addEvents(data.events || []);
  } catch {
    // live events still arrive
  }
  api
    .clips()
    .then((data) => setClips(data?.clips || []))
    .catch(() => {});
  live.start();
  page = null;
  stale = new Set(PAGES);
  route();
}

function leave(setupRequired = false, ended = null) {
  authenticated = false;
  live.stop();
  clearInterval(refreshTimer);
  reset();
  page = null;
  byId("tabs").hidden = true;
  byId("logout").hidden = true;
  showPage("login");
  renderBanner();
  views.login.show(Boolean(setupRequired), ended);
}

async function main() {
  await initI18n();
  views.login = loginView.mount(ctx);
  views.overview = overviewView.mount(ctx);
  views.lights = lightsView.mount(ctx);
  views.pa = paView.mount(ctx);
  views.wifi = wifiView.mount(ctx);
  views.schedules = schedulesView.mount(ctx);
  views.events = eventsView.mount(ctx);

  subscribe(queueRender);
  subscribe((what) => {
    if (what === "all" || what === "system" || what === "lang") renderBanner();
  });
  onLangChange(() => {
    setGatewayName(gatewayName);
    renderBanner();
    for (const name of PAGES) stale.add(name);
    queueRender("lang");
  });
  byId("lang-switch").addEventListener("click", () => setLang(lang() === "vi" ? "en" : "vi"));
  byId("logout").addEventListener("click", async () => {
    try {
      await api.logout();
    } catch {
      // logged out locally all the same
    }
    await start();
  });
  window.addEventListener("hashchange", route);
  api.onUnauthenticated(() => {
    if (authenticated) start();
  });
  await start();
  document.body.dataset.ready = "true";
}

main().catch((error) => {
  const loading = document.getElementById("loading");
  if (loading) {
    loading.hidden = false;
    loading.textContent = String(error);
  }
});
