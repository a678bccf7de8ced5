// One EventSource on /v1/events (the session cookie authenticates it) shared by every page.
// The stream ends on its own after the verifier's event_stream_max_seconds; the browser then
// reconnects with Last-Event-ID. When the verifier refuses the stream (401: the session
// expired; 429: too many streams) the browser gives up: we probe the API (a 401 there shows
// the login view) and reopen after the last event we saw.

const RETRY_MS = 2000;

export class LiveEvents {
  constructor({ probe, onStatus }) {
    this.probe = probe; // async () => void; rejects (and shows login) when the session is gone
    this.onStatus = onStatus; // (connected: boolean) => void
    this.handlers = new Set();
    this.source = null;
    this.lastId = null;
    this.timer = null;
    this.stopped = true;
  }

  subscribe(handler) {
    this.handlers.add(handler);
    return () => this.handlers.delete(handler);
  }

  /** Start after event id `after` (null: the newest the caller knows is unknown → 0). */
  start(after) {
    if (!this.stopped) return;
    this.stopped = false;
    if (after !== null && after !== undefined) this.lastId = String(after);
    this.open();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    this.source = null;
    this.onStatus(false);
  }

  open() {
    if (this.stopped) return;
    const url = this.lastId === null ? "/v1/events" : `/v1/events?after=${encodeURIComponent(this.lastId)}`;
    const source = new EventSource(url, { withCredentials: false });
    this.source = source;
    source.onopen = () => this.onStatus(true);
    source.addEventListener("transition", (message) => {
      if (message.lastEventId) this.lastId = message.lastEventId;
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      for (const handler of [...this.handlers]) {
        try {
          handler(event);
        } catch (error) {
          console.warn("event handler failed", error);
        }
      }
    });
    source.onerror = () => {
      this.onStatus(false);
      if (source.readyState !== EventSource.CLOSED) return; // the browser reconnects itself
      source.close();
      if (this.source !== source) return;
      this.source = null;
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.retry(), RETRY_MS);
    };
  }

  async retry() {
    if (this.stopped) return;
    try {
      await this.probe();
    } catch {
      // the probe failed: a 401 stopped us through the login view; otherwise try again later
      if (!this.stopped) this.timer = setTimeout(() => this.retry(), RETRY_MS * 2);
      return;
    }
    this.open();
  }
}
