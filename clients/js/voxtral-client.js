// voxtral-client.js: the envelope protocol of /api/asr-streaming as a small ES module.
// No dependencies and no build step: import it as is in a browser (the proxy serves it at
// /js/voxtral-client.js) or in any runtime with WebSocket, EventTarget and CustomEvent.
//
//   import { VoxtralClient } from "/js/voxtral-client.js";
//   const client = new VoxtralClient("wss://host/api/asr-streaming", { getToken });
//   client.addEventListener("delta", (e) => show(e.detail.delta));
//   await client.connect();
//   client.startUtterance();
//   client.sendPcm(int16Samples);           // 16 kHz mono PCM16, any length
//   const end = await client.finish();      // the utterance's last event (done, cancelled, error)

/** The subprotocol the server echoes, and the prefix of the one that carries a credential
 * (browsers cannot set headers on a WebSocket; a subprotocol keeps it out of the URL). */
export const SUBPROTOCOL = "voxtral-stt";
export const AUTH_SUBPROTOCOL_PREFIX = "voxtral-stt.auth.";
// What a subprotocol may contain (an HTTP token); browsers throw on anything else.
const TOKEN_CHARS = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** 16 kHz mono PCM16: 80 ms is 1280 samples, 2560 bytes. */
export const SAMPLE_RATE = 16000;
export const CHUNK_BYTES = 2560;

/**
 * @typedef {object} Envelope
 * @property {string} type
 * @property {string | null} session_id
 * @property {string | null} request_id
 * @property {Record<string, any>} payload
 */

/**
 * @typedef {object} ErrorPayload
 * @property {string} code     machine-readable code, e.g. "unauthorized"
 * @property {string} message  one sentence saying what to do
 * @property {Record<string, any>} details
 */

/**
 * @typedef {object} DonePayload
 * @property {string} text
 * @property {{prompt_tokens: number, completion_tokens: number, total_tokens: number}} usage
 * @property {number} audio_ms
 */

/**
 * @typedef {object} ClientOptions
 * @property {() => Promise<string> | string} [getToken]  called by every connect() for a
 *                                 fresh client token (tokens open one connection each), e.g.
 *                                 from your backend, which mints it with POST /api/tokens
 * @property {string} [token]      one client token (good for one connect())
 * @property {string} [apiKey]     an API key, for trusted code only (a key in a web page can
 *                                 be read by anyone who loads it: prefer tokens there)
 * @property {string} [sessionId]  names the session from its first event; otherwise the
 *                                 server's generated id is used
 * @property {boolean} [binary]    send audio as binary frames (the default: a quarter fewer bytes
 *                                 than base64 and nothing to encode); false sends base64 JSON
 *                                 appends
 * @property {typeof WebSocket} [WebSocketImpl]  a WebSocket constructor (default: the global)
 */

/**
 * Detail of the "close" event, and the reason a failed connect() rejects with.
 * @typedef {object} CloseInfo
 * @property {number} code            WebSocket close code (4001 unauthorized, 1000 after end, ...)
 * @property {string} reason          close reason text (often empty)
 * @property {ErrorPayload | null} error  the connection-level error event sent before the close
 */

/** Raised by connect() when the server refuses the connection (or it cannot be opened). */
export class ConnectError extends Error {
  /** @param {CloseInfo} info */
  constructor(info) {
    const why = info.error ? `${info.error.code}: ${info.error.message}` : "connection failed";
    super(`${why} (close ${info.code})`);
    this.name = "ConnectError";
    /** @type {number} */ this.code = info.code;
    /** @type {string} */ this.reason = info.reason;
    /** @type {ErrorPayload | null} */ this.error = info.error;
  }
}

/** Error codes that refuse a single message; the utterance it named goes on. */
const MESSAGE_REFUSALS = new Set([
  "invalid_json",
  "invalid_message",
  "unknown_type",
  "payload_too_large",
  "invalid_audio",
  "request_id_mismatch",
  "unsupported_model",
  "rate_limited",
]);

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Standard base64 (with padding) of bytes. */
export function toBase64(/** @type {Uint8Array} */ bytes) {
  // @ts-ignore: Uint8Array.prototype.toBase64 is recent; fall back to btoa where missing.
  if (typeof bytes.toBase64 === "function") return bytes.toBase64();
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, Array.from(bytes.subarray(i, i + 0x8000)));
  }
  return btoa(binary);
}

/**
 * Little-endian bytes of PCM16 samples.
 * @param {Int16Array | ArrayBuffer | Uint8Array} pcm  Int16Array samples, or raw PCM16LE bytes
 * @returns {Uint8Array}
 */
function pcmBytes(pcm) {
  if (pcm instanceof ArrayBuffer) return new Uint8Array(pcm);
  if (pcm instanceof Uint8Array) return pcm;
  if (pcm instanceof Int16Array) {
    const bytes = new Uint8Array(pcm.buffer, pcm.byteOffset, pcm.byteLength);
    if (LITTLE_ENDIAN) return bytes;
    const swapped = new Uint8Array(pcm.length * 2);
    const view = new DataView(swapped.buffer);
    pcm.forEach((sample, i) => view.setInt16(i * 2, sample, true));
    return swapped;
  }
  throw new TypeError("sendPcm expects an Int16Array, an ArrayBuffer or a Uint8Array");
}

let idCounter = 0;

/** A fresh utterance id, unique enough for one session. */
export function newRequestId() {
  idCounter += 1;
  return `u${idCounter}-${Math.random().toString(36).slice(2, 10)}`;
}

/**
 * One connection to /api/asr-streaming.
 *
 * Events (all CustomEvents; the envelope's payload is in `event.detail`, with `requestId`
 * added where the event belongs to an utterance):
 * - "session.created": detail = session.created payload (model, audio format, limits)
 * - "delta":      detail = {requestId, delta}
 * - "done":       detail = {requestId, text, usage, audio_ms}
 * - "cancelled":  detail = {requestId, reason}
 * - "error":      detail = {requestId, code, message, details}  (requestId null: connection-level)
 * - "pong", "session.updated", "session.ended": detail = payload
 * - "close":      detail = CloseInfo {code, reason, error}
 * - "message":    detail = every server envelope, as received
 */
export class VoxtralClient extends EventTarget {
  /**
   * @param {string} url  ws:// or wss:// URL of /api/asr-streaming
   * @param {ClientOptions} [options]
   */
  constructor(url, options = {}) {
    super();
    const target = new URL(url);
    const { getToken, token, apiKey } = options;
    /** @private @type {() => Promise<string> | string} where connect() gets its credential */
    this._credential = getToken ?? (() => token ?? apiKey ?? "");
    if (options.sessionId) target.searchParams.set("session_id", options.sessionId);
    /** @private */ this._url = target.toString();
    /** @private */ this._WebSocket = options.WebSocketImpl ?? globalThis.WebSocket;
    /** @type {boolean} audio goes as binary frames (true) or base64 JSON appends */
    this.binary = options.binary ?? true;
    /** @type {string | null} session id used on every message */
    this.sessionId = options.sessionId ?? null;
    /** @type {Record<string, any> | null} the session.created payload */
    this.session = null;
    /** @type {string | null} the open utterance, if any */
    this.openRequestId = null;
    /** @type {WebSocket | null} */
    this.ws = null;
    /** @type {CloseInfo | null} set once the socket has closed */
    this.closed = null;
    /** @private @type {ErrorPayload | null} last connection-level error */
    this._lastError = null;
    /** @private @type {Uint8Array} PCM bytes waiting to fill an 80 ms chunk */
    this._pending = new Uint8Array(0);
    /** @private @type {Map<string, (end: Envelope) => void>} utterances awaiting their end */
    this._ends = new Map();
    /** @private @type {Map<string, (payload: any) => void>} pings awaiting their pong */
    this._pongs = new Map();
    /** @private */ this._pingCounter = 0;
  }

  /** True while the socket is open and session.created has arrived. */
  get ready() {
    return this.session !== null && this.closed === null;
  }

  /**
   * Opens the socket; resolves with the session.created payload, rejects with a ConnectError
   * when the server refuses (the "error" and "close" events fire as well).
   * @returns {Promise<Record<string, any>>}
   */
  async connect() {
    if (this.ws) throw new Error("connect() was already called");
    const credential = await this._credential();
    if (!TOKEN_CHARS.test(credential)) {
      throw new Error("the API key or token is empty or has characters a subprotocol cannot carry");
    }
    return new Promise((resolve, reject) => {
      const ws = new this._WebSocket(this._url, [SUBPROTOCOL, AUTH_SUBPROTOCOL_PREFIX + credential]);
      this.ws = ws;
      ws.onmessage = (message) => {
        if (typeof message.data !== "string") return;
        /** @type {Envelope} */
        let event;
        try {
          event = JSON.parse(message.data);
        } catch {
          return;
        }
        if (event.type === "session.created") {
          this.sessionId = this.sessionId ?? event.session_id;
          this.session = event.payload;
          resolve(event.payload);
        }
        this._handle(event);
      };
      ws.onclose = (close) => {
        const info = { code: close.code, reason: close.reason, error: this._lastError };
        this.closed = info;
        this.openRequestId = null;
        const ending = this._lastError?.code ?? "connection_closed";
        for (const [requestId, settle] of this._ends) {
          settle({
            type: "error",
            session_id: this.sessionId,
            request_id: requestId,
            payload: { code: ending, message: "The connection closed.", details: {} },
          });
        }
        this._ends.clear();
        this._emit("close", info);
        reject(new ConnectError(info)); // no effect once resolved
      };
    });
  }

  /**
   * Opens a new utterance (commit final:false). Opening one while another is open cancels
   * the old one on the server (barge-in, "superseded").
   * @param {string} [requestId]  default: a fresh id
   * @returns {string} the utterance's request id
   */
  startUtterance(requestId = newRequestId()) {
    this._pending = new Uint8Array(0);
    this.openRequestId = requestId;
    this._send("input_audio_buffer.commit", requestId, { final: false });
    return requestId;
  }

  /**
   * Queues 16 kHz mono PCM16 for the open utterance and sends every complete 80 ms chunk
   * (2560 bytes, as a binary frame or a base64 append) at once; the remainder waits for more audio or for finish().
   * @param {Int16Array | ArrayBuffer | Uint8Array} pcm
   * @returns {number} the number of chunks sent
   */
  sendPcm(pcm) {
    const requestId = this._requireOpen("sendPcm");
    const incoming = pcmBytes(pcm);
    const joined = new Uint8Array(this._pending.length + incoming.length);
    joined.set(this._pending);
    joined.set(incoming, this._pending.length);
    let offset = 0;
    while (joined.length - offset >= CHUNK_BYTES) {
      this._sendAudio(requestId, joined.subarray(offset, offset + CHUNK_BYTES));
      offset += CHUNK_BYTES;
    }
    this._pending = joined.slice(offset);
    return offset / CHUNK_BYTES;
  }

  /**
   * Sends the buffered remainder and the final commit of the open utterance. Resolves with
   * the utterance's last event: `transcription.done` (payload: DonePayload), `cancelled` or
   * `error` (also when the connection closes first). It never rejects.
   * @returns {Promise<Envelope>}
   */
  finish() {
    const requestId = this._requireOpen("finish");
    if (this._pending.length >= 2) {
      this._sendAudio(requestId, this._pending.subarray(0, this._pending.length & ~1));
    }
    this._pending = new Uint8Array(0);
    this.openRequestId = null;
    const end = this._waitForEnd(requestId);
    this._send("input_audio_buffer.commit", requestId, { final: true });
    return end;
  }

  /**
   * Cancels an utterance (the open one by default, or a finalizing one by id); answered by
   * a "cancelled" event.
   * @param {string} [reason]  echoed back in `cancelled`; default "client_request"
   * @param {string} [requestId]
   */
  cancel(reason, requestId = this.openRequestId ?? undefined) {
    if (!requestId) throw new Error("cancel: no utterance to cancel");
    if (requestId === this.openRequestId) {
      this.openRequestId = null;
      this._pending = new Uint8Array(0);
    }
    this._send("cancel", requestId, reason ? { reason } : {});
  }

  /**
   * Sends a ping; resolves with the pong's payload. Also keeps the idle timeout away.
   * @param {Record<string, any>} [payload]
   * @returns {Promise<Record<string, any>>}
   */
  ping(payload = {}) {
    this._pingCounter += 1;
    const requestId = `ping-${this._pingCounter}`;
    const pong = new Promise((resolve) => this._pongs.set(requestId, resolve));
    this._send("ping", requestId, payload);
    return pong;
  }

  /**
   * Ends the session: the open utterance is finalized, every utterance gets its end, then the
   * server sends session.ended and closes with 1000. Resolves with the CloseInfo.
   * @returns {Promise<CloseInfo>}
   */
  end() {
    if (this.closed) return Promise.resolve(this.closed);
    if (this.openRequestId && this._pending.length >= 2) {
      this._sendAudio(this.openRequestId, this._pending.subarray(0, this._pending.length & ~1));
    }
    if (this.openRequestId) this._waitForEnd(this.openRequestId);
    this._pending = new Uint8Array(0);
    this.openRequestId = null;
    const closed = new Promise((resolve) =>
      this.addEventListener("close", (e) => resolve(/** @type {CustomEvent} */ (e).detail), {
        once: true,
      }),
    );
    this._send("end", null, undefined);
    return /** @type {Promise<CloseInfo>} */ (closed);
  }

  /** Closes the socket without the end handshake (utterances in flight are lost). */
  close(code = 1000, reason = "") {
    this.ws?.close(code, reason);
  }

  /**
   * Shorthand for addEventListener that hands the listener `event.detail`.
   * @param {string} type
   * @param {(detail: any) => void} listener
   * @returns {() => void} removes the listener
   */
  on(type, listener) {
    /** @param {Event} event */
    const wrapped = (event) => listener(/** @type {CustomEvent} */ (event).detail);
    this.addEventListener(type, wrapped);
    return () => this.removeEventListener(type, wrapped);
  }

  // -- internals ---------------------------------------------------------------------------

  /** @private @param {Envelope} event */
  _handle(event) {
    this._emit("message", event);
    const requestId = event.request_id ?? null;
    const payload = event.payload ?? {};
    switch (event.type) {
      case "transcription.delta":
        this._emit("delta", { requestId, delta: payload.delta });
        break;
      case "transcription.done":
        this._emit("done", { requestId, ...payload });
        this._settle(requestId, event);
        break;
      case "cancelled":
        if (requestId === this.openRequestId) this.openRequestId = null;
        this._emit("cancelled", { requestId, ...payload });
        this._settle(requestId, event);
        break;
      case "error":
        if (requestId === null) this._lastError = /** @type {ErrorPayload} */ (payload);
        this._emit("error", { requestId, ...payload });
        // Errors that refuse one message leave its utterance alive; the others end it.
        if (requestId !== null && !MESSAGE_REFUSALS.has(payload.code)) {
          if (requestId === this.openRequestId) this.openRequestId = null;
          this._settle(requestId, event);
        }
        break;
      case "pong": {
        const resolve = requestId ? this._pongs.get(requestId) : undefined;
        if (resolve && requestId) {
          this._pongs.delete(requestId);
          resolve(payload);
        }
        this._emit("pong", payload);
        break;
      }
      default:
        this._emit(event.type, payload);
    }
  }

  /** @private @param {string} requestId @returns {Promise<Envelope>} */
  _waitForEnd(requestId) {
    return new Promise((resolve) => this._ends.set(requestId, resolve));
  }

  /** @private @param {string | null} requestId @param {Envelope} event */
  _settle(requestId, event) {
    const settle = requestId ? this._ends.get(requestId) : undefined;
    if (settle && requestId) {
      this._ends.delete(requestId);
      settle(event);
    }
  }

  /** @private @param {string} what @returns {string} */
  _requireOpen(what) {
    if (!this.openRequestId) throw new Error(`${what}: no open utterance; call startUtterance()`);
    return this.openRequestId;
  }

  /** @private @param {string} requestId @param {Uint8Array} bytes */
  _sendAudio(requestId, bytes) {
    if (!this.binary) {
      this._send("input_audio_buffer.append", requestId, { audio: toBase64(bytes) });
      return;
    }
    if (!this.ready || !this.ws) throw new Error("audio: the session is not open");
    // A binary frame is audio for the open utterance (this one: _requireOpen checked it).
    this.ws.send(bytes);
  }

  /**
   * @private
   * @param {string} type
   * @param {string | null} requestId
   * @param {Record<string, any> | undefined} payload
   */
  _send(type, requestId, payload) {
    if (!this.ready || !this.ws) throw new Error(`${type}: the session is not open`);
    /** @type {Record<string, any>} */
    const message = { type, session_id: this.sessionId };
    if (requestId !== null) message.request_id = requestId;
    if (payload !== undefined) message.payload = payload;
    this.ws.send(JSON.stringify(message));
  }

  /** @private @param {string} type @param {any} detail */
  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/**
 * Mints a client token: POST /api/tokens with an API key. Meant for backends (the key stays
 * there; the browser gets only the token), or a page where the user typed the key.
 * @param {string} tokensUrl  http(s) URL of /api/tokens
 * @param {string} apiKey
 * @param {{expiresIn?: number, sessionId?: string}} [options]  expiry in seconds (server
 *        default 60), and the session_id the token is bound to
 * @returns {Promise<string>}
 */
export async function mintToken(tokensUrl, apiKey, options = {}) {
  const body = {};
  if (options.expiresIn !== undefined) body.expires_in = options.expiresIn;
  if (options.sessionId !== undefined) body.session_id = options.sessionId;
  const response = await fetch(tokensUrl, {
    method: "POST",
    headers: { "X-API-Key": apiKey, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    // The HTTP status stands in for the close code: no socket was opened.
    const error = answer.error ?? { code: `http_${response.status}`, message: "" };
    throw new ConnectError({ code: response.status, reason: "", error: { details: {}, ...error } });
  }
  return answer.token;
}

/**
 * Creates a client and connects it. Listeners attached afterwards miss nothing but
 * session.created (its payload is the client's `session`); use `new VoxtralClient()` and
 * `connect()` to see refusal events as they happen.
 * @param {string} url
 * @param {ClientOptions} [options]
 * @returns {Promise<VoxtralClient>}
 */
export async function connect(url, options = {}) {
  const client = new VoxtralClient(url, options);
  await client.connect();
  return client;
}
