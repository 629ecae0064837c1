// Sluice live push client: no build step, no dependencies.
// const push = new SluicePush(() => fetchMyTokenUrl(), {onMessage: (m) => show(m.body)});
// `tokenUrl` returns (or resolves to) "ws://host:port/v1/push/ws?token=…"; it is called again
// for every reconnect, so it can mint a fresh token. Each message is acknowledged once
// onMessage returns; after a lost connection the client resumes from the last id it saw and
// is sent exactly what it missed (onMissed: some of it was older than the replay window).
class SluicePush {
  constructor(tokenUrl, {onMessage = () => {}, onMissed = () => {}, onState = () => {},
                         minDelay = 500, maxDelay = 30000} = {}) {
    Object.assign(this, {tokenUrl, onMessage, onMissed, onState, minDelay, maxDelay});
    this.lastId = null;
    this.seen = new Set();
    this.delay = minDelay;
    this.stopped = false;
    this.connect();
  }
  async connect() {
    let url = await this.tokenUrl();
    if (this.lastId) url += "&last_id=" + encodeURIComponent(this.lastId);
    const ws = this.ws = new WebSocket(url);
    ws.onopen = () => { this.delay = this.minDelay; this.onState("open"); };
    ws.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (frame.type === "missed") return this.onMissed();
      if (frame.type !== "message") return;
      if (!this.seen.has(frame.id)) {
        this.seen.add(frame.id);
        if (this.seen.size > 10000) this.seen.delete(this.seen.values().next().value);
        this.onMessage(frame);
      }
      // Ids are time-ordered strings of one length: the largest is the newest.
      if (this.lastId === null || frame.id > this.lastId) this.lastId = frame.id;
      ws.send(JSON.stringify({type: "ack", ids: [frame.id]}));
    };
    ws.onclose = (event) => {
      this.onState("closed", event.code, event.reason);
      if (this.stopped) return;
      const wait = this.delay * (0.5 + Math.random() / 2);  // jitter: no reconnect storms
      this.delay = Math.min(this.delay * 2, this.maxDelay);
      setTimeout(() => this.connect(), wait);
    };
  }
  close() { this.stopped = true; if (this.ws) this.ws.close(1000); }
}
window.SluicePush = SluicePush;
