// The browser demo: microphone -> AudioWorklet (16 kHz PCM16, 80 ms chunks) -> VoxtralClient.
// Start opens a connection when none is open, then a new utterance; Stop sends the remaining
// audio and the final commit. The connection stays open for the next Start.
// The key typed here never goes into a URL or onto the WebSocket: each connection first trades
// it for a one-connection client token (POST /api/tokens, same origin), which the client
// offers as a subprotocol.

import { ConnectError, VoxtralClient, mintToken } from "../js/voxtral-client.js";

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
const keyInput = /** @type {HTMLInputElement} */ ($("key"));
const startButton = /** @type {HTMLButtonElement} */ ($("start"));
const stopButton = /** @type {HTMLButtonElement} */ ($("stop"));

const KEY_STORAGE = "voxtral-demo-key"; // sessionStorage: kept for this tab only
const FLUSH_TIMEOUT_MS = 1000;

/**
 * @typedef {object} Utterance
 * @property {string} requestId
 * @property {number} number
 * @property {string} text
 * @property {number | null} firstAudioAt   performance.now() of the first chunk sent
 * @property {number | null} firstWordAt
 * @property {number | null} finalAt        when the final commit was sent
 * @property {HTMLTableRowElement | null} row
 */

/** @type {VoxtralClient | null} */
let client = null;
let clientKey = "";
/** @type {Map<string, Utterance>} */
const utterances = new Map();
/** @type {Utterance | null} the utterance being recorded */
let current = null;
let counter = 0;

/** @type {AudioContext | null} */
let audioContext = null;
/** @type {{stream: MediaStream, source: MediaStreamAudioSourceNode, node: AudioWorkletNode, sink: GainNode} | null} */
let capture = null;

// -- display ---------------------------------------------------------------------------------

function setStatus(/** @type {string} */ state, text = state) {
  const status = $("status");
  status.dataset.state = state;
  status.textContent = text;
}

function logLine(/** @type {string} */ text, bad = false) {
  const item = document.createElement("li");
  item.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  if (bad) item.className = "bad";
  const log = $("log");
  log.append(item);
  log.scrollTop = log.scrollHeight;
}

function showError(/** @type {{code: string, message: string}} */ error) {
  $("problem").hidden = false;
  $("error-code").textContent = error.code;
  $("error-message").textContent = error.message;
}

function showClose(/** @type {{code: number, reason: string, error: {code: string} | null}} */ info) {
  $("problem").hidden = info.code === 1000 && !$("error-code").textContent;
  $("close-code").textContent = String(info.code);
  $("close-reason").textContent = info.error ? `(${info.error.code})` : info.reason;
}

function clearProblem() {
  $("problem").hidden = true;
  for (const id of ["error-code", "error-message", "close-code", "close-reason"]) {
    $(id).textContent = "";
  }
}

function ms(/** @type {number | null} */ from, /** @type {number | null} */ to) {
  return from !== null && to !== null ? `${Math.round(to - from)} ms` : "—";
}

function setLive(/** @type {string} */ text, /** @type {string} */ state) {
  $("live").textContent = text;
  $("live-state").textContent = state;
}

/** Adds (or refreshes) the utterance's row in the table. */
function renderRow(/** @type {Utterance} */ u, /** @type {string} */ state, extra = {}) {
  if (!u.row) {
    u.row = document.createElement("tr");
    u.row.className = "utterance";
    u.row.dataset.requestId = u.requestId;
    for (const name of ["number", "text", "ttfw", "final", "audio"]) {
      const cell = document.createElement("td");
      cell.className = name === "text" ? "text" : `num ${name}`;
      u.row.append(cell);
    }
    u.row.cells[0].textContent = String(u.number);
    document.querySelector("#utterances tbody")?.prepend(u.row);
    $("no-utterances").hidden = true;
  }
  u.row.classList.remove("finalizing", "done", "failed");
  u.row.classList.add(state);
  u.row.cells[1].textContent = u.text || (state === "finalizing" ? "…" : "(no words)");
  u.row.cells[2].textContent = ms(u.firstAudioAt, u.firstWordAt);
  if (state !== "finalizing") u.row.cells[3].textContent = ms(u.finalAt, performance.now());
  if ("audioMs" in extra) u.row.cells[4].textContent = `${(extra.audioMs / 1000).toFixed(1)} s`;
  if ("why" in extra) u.row.cells[4].textContent = String(extra.why);
}

function setButtons(/** @type {"idle" | "busy" | "recording"} */ mode) {
  keyInput.disabled = mode !== "idle";
  startButton.disabled = mode !== "idle";
  stopButton.disabled = mode !== "recording";
}

// -- protocol ----------------------------------------------------------------------------------

function streamingUrl() {
  const url = new URL("api/asr-streaming", window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.toString();
}

const TOKENS_URL = new URL("api/tokens", window.location.href).toString();

/** Connects when there is no usable connection; false when the server refused. */
async function ensureConnected() {
  const key = keyInput.value.trim();
  if (!key) {
    // A person at this page types a key; header advice (the server's answer) is for programs.
    showError({ code: "no key", message: "Type an API key into the key box, then press Start." });
    return false;
  }
  if (client && !client.closed && clientKey === key) return true;
  if (client && !client.closed) client.close();
  clearProblem();
  setStatus("connecting");
  client = new VoxtralClient(streamingUrl(), { getToken: () => mintToken(TOKENS_URL, key) });
  clientKey = key;
  attach(client);
  try {
    const session = await client.connect();
    sessionStorage.setItem(KEY_STORAGE, key);
    setStatus("connected");
    $("session-info").textContent =
      `Session ${client.sessionId} · ${session.model} · delay ${session.transcription_delay_ms} ms.`;
    return true;
  } catch (error) {
    if (error instanceof ConnectError && !client.ws && error.error) {
      // The token request was refused: no socket, so no error or close event to show it.
      showError(error.error);
      logLine(`token refused  ${error.code} (${error.error.code})`, true);
      setStatus("closed", `refused ${error.code}`);
    }
    return false; // otherwise the error and close events have been shown already
  }
}

function attach(/** @type {VoxtralClient} */ c) {
  c.on("session.created", (s) => logLine(`session.created  ${c.sessionId}  model ${s.model}`));
  c.on("delta", ({ requestId, delta }) => {
    const u = utterances.get(requestId);
    if (!u) return;
    u.firstWordAt ??= performance.now();
    u.text += delta;
    if (u === current) setLive(u.text, "listening…");
    else renderRow(u, "finalizing");
  });
  c.on("done", ({ requestId, text, audio_ms: audioMs }) => {
    const u = utterances.get(requestId);
    if (!u) return;
    u.text = text;
    renderRow(u, "done", { audioMs });
    logLine(`transcription.done  #${u.number}  ${audioMs} ms of audio`);
  });
  c.on("cancelled", ({ requestId, reason }) => {
    const u = utterances.get(requestId);
    if (u && u === current) endedEarly(c, u, `cancelled: ${reason}`);
    logLine(`cancelled  ${requestId}  ${reason}`, true);
  });
  c.on("error", ({ requestId, code, message }) => {
    showError({ code, message });
    logLine(`error ${code}${requestId ? ` (${requestId})` : ""}: ${message}`, true);
    const u = requestId ? utterances.get(requestId) : undefined;
    // An error that ended the open utterance (the client has closed it): stop recording.
    if (u && u === current && c.openRequestId !== requestId) endedEarly(c, u, code);
  });
  c.on("close", (info) => {
    if (c !== client) return; // an older connection we replaced
    showClose(info);
    logLine(`closed  ${info.code}${info.error ? ` (${info.error.code})` : ""}`, info.code !== 1000);
    setStatus("closed", `closed ${info.code}`);
    $("session-info").textContent = "Not connected.";
    if (current) endedEarly(c, current, "closed");
    setButtons("idle");
  });
}

/** The open utterance ended without its text (cancelled, error, closed): stop recording. */
function endedEarly(/** @type {VoxtralClient} */ c, /** @type {Utterance} */ u, why = "") {
  current = null;
  void stopCapture();
  setLive("", "");
  if (!c.closed) setStatus("connected");
  setButtons("idle");
  renderRow(u, "failed", { why });
}

// -- microphone --------------------------------------------------------------------------------

async function startCapture(/** @type {(pcm: ArrayBuffer) => void} */ onChunk) {
  if (!window.isSecureContext || !navigator.mediaDevices || !window.AudioWorkletNode) {
    throw new Error(
      "browsers give the microphone only to secure pages: open this page over https, " +
        "or as http://localhost",
    );
  }
  // The model wants the voice as the microphone hears it: the browser's voice processing
  // (echo cancellation, noise suppression, gain control) is tuned for calls and only costs
  // accuracy here.
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: {
      channelCount: 1,
      echoCancellation: false,
      noiseSuppression: false,
      autoGainControl: false,
    },
  });
  try {
    if (!audioContext) {
      const context = new AudioContext();
      try {
        await context.audioWorklet.addModule(new URL("pcm-worklet.js", import.meta.url));
      } catch (err) {
        void context.close();
        throw err;
      }
      audioContext = context;
    }
    await audioContext.resume();
    const source = audioContext.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(audioContext, "pcm-resampler", {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      channelCountMode: "explicit",
      channelCount: 1,
    });
    // A silent path to the destination keeps the node pulled by the audio graph.
    const sink = audioContext.createGain();
    sink.gain.value = 0;
    source.connect(node).connect(sink).connect(audioContext.destination);
    node.port.onmessage = (event) => {
      if (event.data.type === "chunk") onChunk(event.data.pcm);
    };
    capture = { stream, source, node, sink };
  } catch (err) {
    for (const track of stream.getTracks()) track.stop();
    throw err;
  }
}

/** Flushes the resampler (its last samples arrive as chunks) and releases the microphone. */
async function stopCapture() {
  if (!capture) return;
  const { stream, source, node, sink } = capture;
  capture = null;
  source.disconnect();
  const flushed = new Promise((resolve) => {
    const previous = node.port.onmessage;
    node.port.onmessage = (event) => {
      if (event.data.type === "flushed") resolve(true);
      else previous?.call(node.port, event);
    };
    setTimeout(() => resolve(false), FLUSH_TIMEOUT_MS);
  });
  node.port.postMessage({ type: "flush" });
  await flushed;
  node.port.onmessage = null;
  node.disconnect();
  sink.disconnect();
  for (const track of stream.getTracks()) track.stop();
}

// -- buttons -------------------------------------------------------------------------------------

async function start() {
  setButtons("busy");
  if (!(await ensureConnected()) || !client) {
    setButtons("idle");
    return;
  }
  const c = client;
  counter += 1;
  /** @type {Utterance} */
  const u = {
    requestId: "",
    number: counter,
    text: "",
    firstAudioAt: null,
    firstWordAt: null,
    finalAt: null,
    row: null,
  };
  try {
    await startCapture((pcm) => {
      if (current !== u || c.openRequestId !== u.requestId) return;
      u.firstAudioAt ??= performance.now();
      try {
        c.sendPcm(pcm);
      } catch (err) {
        logLine(`audio not sent: ${err instanceof Error ? err.message : err}`, true);
      }
    });
  } catch (err) {
    const message = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    showError({ code: "microphone", message });
    logLine(`microphone unavailable: ${message}`, true);
    setButtons("idle");
    return;
  }
  u.requestId = c.startUtterance();
  utterances.set(u.requestId, u);
  current = u;
  setLive("", "listening…");
  logLine(`utterance #${u.number} opened  ${u.requestId}`);
  setStatus("recording", "recording");
  setButtons("recording");
}

async function stop() {
  const u = current;
  const c = client;
  setButtons("busy");
  await stopCapture(); // its last chunks are sent while current is still u
  current = null;
  setLive("", "");
  if (!u || !c || c.closed || c.openRequestId !== u.requestId) {
    setButtons("idle");
    return;
  }
  u.finalAt = performance.now();
  const ending = c.finish();
  logLine(`utterance #${u.number} final commit`);
  renderRow(u, "finalizing");
  setStatus("connected");
  setButtons("idle");
  const end = await ending; // done, or the cancelled/error event that ended it
  if (end.type !== "transcription.done") {
    renderRow(u, "failed", { why: end.type === "cancelled" ? "cancelled" : end.payload.code });
  }
}

keyInput.value = sessionStorage.getItem(KEY_STORAGE) ?? "";
// Start is the form's submit button, so Enter in the key field starts too.
$("controls").addEventListener("submit", (event) => {
  event.preventDefault();
  if (!startButton.disabled) void start();
});
stopButton.addEventListener("click", () => void stop());
