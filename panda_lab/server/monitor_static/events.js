// One event stream per browser: the monitor tabs that show one server with one token
// share the server's event stream (/api/events) instead of holding one each.
//
// Why: a browser opens at most six HTTP/1.1 connections to one host (Chromium's limit
// per host and profile, as Firefox's), and an event stream holds its connection for as
// long as its page is open.  With one stream per tab, a seventh tab, and every JSON
// request queued behind it, would wait for ever.
//
// How, the usual leader election between tabs (as the `broadcast-channel` library's):
// one tab, the leader, opens the stream and passes each of its messages on to the other
// tabs over a BroadcastChannel (HTML Living Standard, "Broadcasting to other browsing
// contexts"); each tab's view keeps what concerns it.  When the leader closes, another
// tab is elected and opens the stream.
// - By the Web Locks API (W3C) where the browser has it: every shown tab asks for one
//   exclusive lock; the browser grants it to one tab at a time and, when that tab lets it
//   go (hidden, closed, crashed), to the next one waiting.
// - Over the channel itself where it has not (navigator.locks exists in a secure context
//   only: a plain http:// address other than localhost has none): the leader says so
//   every HEARTBEAT_MS and says goodbye when its page goes; a tab that heard no leader for
//   LEADER_TIMEOUT_MS, or heard it leave, claims the lead and takes it unless within
//   CLAIM_MS it hears a leader or a claim with a lower id; of two leaders, the higher
//   steps down.
// - Without BroadcastChannel: each tab its own stream, as before.
//
// A hidden tab is no candidate: it lets the lead go and stops waiting for it, so a
// browser whose monitor tabs are all hidden holds no stream.  Each time the stream opens
// the tabs are told ({resync: true}): what happened while none was open is read again.

export const HEARTBEAT_MS = 1000;
export const LEADER_TIMEOUT_MS = 3000;
export const CLAIM_MS = 250;
const RETRY_MS = 1000;         // between two tries to open the stream

// FNV-1a (32 bit) of the token: tabs logged in with different tokens share nothing.
function fnv(text) {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return (h >>> 0).toString(16);
}

// Reads the server's event stream at `url` until `signal` aborts, retrying every
// RETRY_MS; `emit(msg)` gets each message, `status(on, text)` each change of state.
async function pump(url, token, signal, emit, status) {
  while (!signal.aborted) {
    try {
      const r = await fetch(url, {headers: {Authorization: `Bearer ${token}`}, signal});
      if (!r.ok) throw new Error(`event stream: ${r.status}`);
      status(true, "live");
      emit({resync: true});
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let rest = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        const parts = (rest + value).split("\n\n");
        rest = parts.pop();            // only the unfinished message is kept
        for (const part of parts) {
          if (part.startsWith("data: ")) emit(JSON.parse(part.slice(6)));
        }
      }
    } catch (err) {
      if (signal.aborted) return;
    }
    status(false, "reconnecting");
    await new Promise(ok => { const t = setTimeout(ok, RETRY_MS);
                              signal.addEventListener("abort", () => { clearTimeout(t); ok(); }); });
  }
}

/**
 * The browser's shared event stream at `url` (the server's /api/events).
 * `onMessage(msg)`: each message of the stream, and {resync: true} each time it opens.
 * `onStatus({on, text, lead})`: live or not, in words; `lead`: this tab holds the stream.
 * Returns {show(), hide(), close(), mode}: a tab calls hide()/show() as it is hidden and
 * shown; `mode` is "locks", "channel" or "own" (no sharing).
 */
export function sharedStream({url, base, token, onMessage, onStatus,
                              locks = globalThis.navigator?.locks,
                              Channel = globalThis.BroadcastChannel}) {
  const name = `panda-lab-events ${base} ${fnv(token)}`;
  const me = Math.random();
  let now = {on: false, text: "connecting"};  // the stream's state, as last heard
  let leading = null;                          // {signal} of the stream we hold, or null
  let shown = false;
  let closed = false;                          // for good: logged out
  const report = () => onStatus({...now, lead: !!leading});
  const mode = !Channel ? "own" : locks && locks.request ? "locks" : "channel";
  const channel = Channel ? new Channel(name) : null;
  const post = m => channel && channel.postMessage({...m, from: me});

  function lead(signal) {             // open the stream; resolves when signal aborts
    leading = {signal};
    report();
    return pump(url, token, signal,
                msg => { post({kind: "msg", msg}); onMessage(msg); },
                (on, text) => { now = {on, text}; post({kind: "status", ...now}); report(); })
      .finally(() => { leading = null; report(); });
  }

  // ---- election by Web Locks ----------------------------------------------------------
  let candidacy = null;               // AbortController: waiting for, or holding, the lock
  const lockMode = {
    stand() {
      if (candidacy) return;
      const ac = new AbortController();
      candidacy = ac;
      locks.request(name, {signal: ac.signal}, () => lead(ac.signal)).catch(err => {
        // withdrawn while waiting; or refused (an opaque origin): a stream of its own
        if (err.name !== "AbortError" && candidacy === ac) ownMode.stand();
      });
    },
    withdraw() {
      if (candidacy) candidacy.abort();
      candidacy = null;
      ownMode.withdraw();
    },
    heard() {},
  };

  // ---- election over the channel --------------------------------------------------------
  let heardAt = 0;                    // when a leader was last heard
  let claim = null;                   // {beaten, timer} while claiming
  let ticker = null;
  let held = null;                    // AbortController of the lead we hold
  let beatAt = 0;
  const channelMode = {
    stand() {
      if (ticker) return;
      // a leader answers "ask" at once: give it a moment before claiming
      heardAt = performance.now() - LEADER_TIMEOUT_MS + 2 * CLAIM_MS;
      ticker = setInterval(tick, CLAIM_MS);
    },
    withdraw() {
      clearInterval(ticker);
      ticker = null;
      if (claim) clearTimeout(claim.timer);
      claim = null;
      stepDown(true);
    },
    heard(m) {
      if (m.kind === "leader") {
        heardAt = performance.now();
        if (claim) claim.beaten = true;
        if (held && m.from < me) stepDown(false);
        else if (held) beat();                 // the other steps down
      } else if (m.kind === "claim") {
        if (held) beat();
        else if (claim && m.from < me) claim.beaten = true;
      } else if (m.kind === "bye") {
        heardAt = -Infinity;                   // claim at the next tick
      }
    },
  };
  function beat() { beatAt = performance.now(); post({kind: "leader"}); }
  function stepDown(sayBye) {
    if (!held) return;
    if (sayBye) post({kind: "bye"});
    held.abort();
    held = null;
  }
  function tick() {
    const t = performance.now();
    if (held) { if (t - beatAt >= HEARTBEAT_MS) beat(); return; }
    if (claim || t - heardAt < LEADER_TIMEOUT_MS) return;
    post({kind: "claim"});
    claim = {beaten: false, timer: setTimeout(() => {
      const won = claim && !claim.beaten;
      claim = null;
      if (!won || !ticker) return;
      held = new AbortController();
      beat();
      lead(held.signal);
    }, CLAIM_MS)};
  }

  // ---- each tab its own stream ------------------------------------------------------------
  let own = null;
  const ownMode = {
    stand() { if (!own) { own = new AbortController(); lead(own.signal); } },
    withdraw() { if (own) own.abort(); own = null; },
    heard() {},
  };

  const election = {locks: lockMode, channel: channelMode, own: ownMode}[mode];
  if (channel) {
    channel.onmessage = ({data: m}) => {
      if (m.kind === "msg") onMessage(m.msg);
      else if (m.kind === "status") { now = {on: m.on, text: m.text}; report(); }
      else if (m.kind === "ask" && leading) post({kind: "status", ...now});
      if (mode === "channel") {
        if (m.kind === "ask" && held) beat();
        election.heard(m);
      }
    };
  }
  const api = {
    mode,
    show() {
      if (shown || closed) return;
      shown = true;
      post({kind: "ask"});
      election.stand();
      report();
    },
    hide() { shown = false; election.withdraw(); },
    close() {
      shown = false;
      closed = true;
      election.withdraw();
      globalThis.removeEventListener?.("pagehide", pageHide);
      globalThis.removeEventListener?.("pageshow", pageShow);
      if (channel) channel.close();
    },
  };
  // a page going away lets the lead go at once (kept in the back/forward cache, it
  // may come back: then it stands again)
  const pageHide = () => api.hide();
  const pageShow = event => { if (event.persisted && !document.hidden) api.show(); };
  globalThis.addEventListener?.("pagehide", pageHide);
  globalThis.addEventListener?.("pageshow", pageShow);
  return api;
}
