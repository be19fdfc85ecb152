// The WebSocket to /api/v1/ws: hello, state changes, events and log lines as they happen.
//
// A phone on the cultural house's wifi loses the connection often (screen off, walking out
// of range, the daemon restarting). The page reconnects by itself with exponential backoff
// and jitter, so fifty phones do not hammer a restarting Pi in lockstep, and shows
// "reconnecting" meanwhile. Going back online or back to the tab retries at once.

const INITIAL_MS = 500;
const CAP_MS = 15000;

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
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    window.addEventListener("online", this.retryNow);
    document.addEventListener("visibilitychange", this.onVisible);
    this.open();
  }

  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.retryNow);
    document.removeEventListener("visibilitychange", this.onVisible);
    clearTimeout(this.timer);
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
    };
    ws.onmessage = (message) => {
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
      this.ws = null;
      this.onDrop();
      this.schedule();
    };
  }

  schedule() {
    const ceiling = Math.min(CAP_MS, INITIAL_MS * 2 ** this.failures);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.failures += 1;
    this.onStatus("reconnecting");
    this.timer = setTimeout(() => this.open(), delay);
  }
}
