// The WebSocket to /api/v1/ws: hello, state changes, events and log lines as they happen.
//
// A phone on the cultural house's wifi loses the connection often (screen off, walking out
// of range, the daemon restarting). The page reconnects by itself with exponential backoff
// and jitter, so fifty phones do not hammer a restarting Pi in lockstep, and shows
// "reconnecting" meanwhile. Going back online or back to the tab retries at once.

const INITIAL_MS = 500;
const CAP_MS = 15000;
const QUIET_MS = 75000;
// The daemon publishes its system snapshot every 30 s, so a socket that stays silent
// longer is dead even if the browser has not noticed (a phone that walked out of wifi
// range can keep a half-open TCP connection for minutes).

export class Live {
  /**
   * @param {{onMessage: (msg: object) => void, onStatus: (s: string) => void,
   *          onDrop?: () => void}} handlers
   */
  constructor({ onMessage, onStatus, onDrop }) {
    this.onMessage = onMessage;
    this.onStatus = onStatus;
    this.onDrop = onDrop || (() => {});
    this.ws = null;
    this.failures = 0;
    this.timer = null;
    this.stopped = true;
    this.everOpen = false;
    this.retryNow = () => {
      if (!this.stopped && (!this.ws || this.ws.readyState > WebSocket.OPEN)) this.open();
    };
    this.onVisible = () => {
      if (document.visibilityState === "visible") this.retryNow();
    };
    this.onOffline = () => this.drop();
    this.watchdog = 0;
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    window.addEventListener("online", this.retryNow);
    window.addEventListener("offline", this.onOffline);
    document.addEventListener("visibilitychange", this.onVisible);
    this.open();
  }

  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.retryNow);
    window.removeEventListener("offline", this.onOffline);
    document.removeEventListener("visibilitychange", this.onVisible);
    clearTimeout(this.timer);
    clearTimeout(this.watchdog);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000);
    }
    this.everOpen = false;
    this.onStatus("stopped");
  }

  open() {
    clearTimeout(this.timer);
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close();
    }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/api/v1/ws`);
    this.ws = ws;
    this.onStatus(this.everOpen ? "reconnecting" : "connecting");
    ws.onopen = () => {
      this.failures = 0;
      this.everOpen = true;
      this.onStatus("live");
      this.feed();
    };
    ws.onmessage = (message) => {
      this.feed();
      let data;
      try {
        data = JSON.parse(message.data);
      } catch {
        return; // not ours to understand
      }
      this.onMessage(data);
    };
    ws.onclose = () => {
      if (this.ws !== ws || this.stopped) return;
      clearTimeout(this.watchdog);
      this.ws = null;
      this.onDrop();
      this.schedule();
    };
  }

  /** Something arrived: the connection is alive for another QUIET_MS. */
  feed() {
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(() => this.drop(), QUIET_MS);
  }

  /** Give up on the current socket (offline, or silent too long) and reconnect. */
  drop() {
    clearTimeout(this.watchdog);
    if (this.stopped || !this.ws) return;
    const ws = this.ws;
    this.ws = null;
    ws.onclose = null;
    ws.onmessage = null;
    ws.close();
    this.schedule();
  }

  schedule() {
    const ceiling = Math.min(CAP_MS, INITIAL_MS * 2 ** this.failures);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.failures += 1;
    this.onStatus("reconnecting");
    this.timer = setTimeout(() => this.open(), delay);
  }
}
