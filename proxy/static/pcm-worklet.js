// AudioWorklet processor: microphone audio at the context's rate -> 16 kHz mono PCM16 chunks.
//
// Each render quantum is mixed down to mono and fed to a windowed-sinc resampler whose
// low-pass sits just under the 8 kHz Nyquist limit of the output, so downsampling from 44.1 or
// 48 kHz does not fold high frequencies into the speech band. Samples are packed into 80 ms
// chunks (1280 samples) and posted to the page as transferable ArrayBuffers.
//
// Messages from the page: {type: "flush"} pads the filter's look-ahead with silence, posts the
// last (shorter) chunk if any, then posts {type: "flushed"}.
// Messages to the page: {type: "chunk", pcm: ArrayBuffer} and {type: "flushed"}.

const OUT_RATE = 16000;
const CHUNK_SAMPLES = 1280; // 80 ms at 16 kHz
const ZERO_CROSSINGS = 12; // filter half-width, in zero crossings of the low-pass kernel
const CUTOFF = 0.9; // low-pass edge as a fraction of the output's Nyquist frequency
const TABLE_STEPS = 128; // kernel table entries per input sample (linear interpolation between)

class PcmResampler extends AudioWorkletProcessor {
  constructor() {
    super();
    // `sampleRate` is the AudioWorkletGlobalScope's rate: the context's.
    this.step = sampleRate / OUT_RATE; // input samples per output sample
    this.passthrough = sampleRate === OUT_RATE;
    // Normalised cutoff (cycles per input sample, times two) and kernel half-width.
    this.fc = this.passthrough ? 1 : (CUTOFF * OUT_RATE) / sampleRate;
    this.halfWidth = Math.ceil(ZERO_CROSSINGS / this.fc);
    // The Hann-windowed sinc kernel, tabulated over |x| in [0, halfWidth] input samples.
    this.table = new Float32Array(this.halfWidth * TABLE_STEPS + 2);
    for (let k = 0; k < this.table.length; k++) {
      const x = Math.min(k / TABLE_STEPS, this.halfWidth);
      const t = this.fc * x;
      const sinc = t === 0 ? 1 : Math.sin(Math.PI * t) / (Math.PI * t);
      this.table[k] = sinc * (0.5 + 0.5 * Math.cos((Math.PI * x) / this.halfWidth));
    }
    // Input history; `pos` is the next output instant in input-sample units within it. Starting
    // with half a kernel of silence lets the first output sample be centred on input sample 0.
    this.input = new Float32Array(4096);
    this.length = this.halfWidth;
    this.pos = this.halfWidth;
    this.chunk = new Int16Array(CHUNK_SAMPLES);
    this.filled = 0;
    this.port.onmessage = (event) => {
      if (event.data && event.data.type === "flush") this.flush();
    };
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length > 0) {
      const frames = channels[0].length;
      const mono = new Float32Array(frames);
      for (const channel of channels) {
        for (let i = 0; i < frames; i++) mono[i] += channel[i] / channels.length;
      }
      this.push(mono);
      this.resample();
    }
    return true; // keep running while the page holds the node
  }

  push(samples) {
    if (this.length + samples.length > this.input.length) {
      const grown = new Float32Array(Math.max(this.input.length * 2, this.length + samples.length));
      grown.set(this.input.subarray(0, this.length));
      this.input = grown;
    }
    this.input.set(samples, this.length);
    this.length += samples.length;
  }

  // Produces every output sample whose kernel lies within the input received so far.
  resample() {
    if (this.passthrough) {
      for (let i = 0; i < this.length; i++) this.emit(this.input[i]);
      this.length = 0;
      return;
    }
    const { halfWidth, input, table } = this;
    while (this.pos + halfWidth < this.length) {
      const centre = this.pos;
      const first = Math.ceil(centre - halfWidth);
      const last = Math.floor(centre + halfWidth);
      let acc = 0;
      let norm = 0;
      for (let i = first; i <= last; i++) {
        const at = Math.abs(i - centre) * TABLE_STEPS;
        const k = Math.floor(at);
        const w = table[k] + (table[k + 1] - table[k]) * (at - k);
        acc += input[i] * w;
        norm += w;
      }
      this.emit(acc / norm); // normalising keeps the DC gain at exactly 1
      this.pos += this.step;
    }
    // Drop input no later kernel can reach.
    const keepFrom = Math.max(0, Math.floor(this.pos - halfWidth) - 1);
    if (keepFrom > 0) {
      input.copyWithin(0, keepFrom, this.length);
      this.length -= keepFrom;
      this.pos -= keepFrom;
    }
  }

  emit(value) {
    const clamped = Math.max(-1, Math.min(1, value));
    this.chunk[this.filled++] = Math.round(clamped < 0 ? clamped * 32768 : clamped * 32767);
    if (this.filled === CHUNK_SAMPLES) this.post(this.chunk);
  }

  post(samples) {
    const pcm = samples.slice().buffer;
    this.port.postMessage({ type: "chunk", pcm }, [pcm]);
    this.filled = 0;
  }

  flush() {
    if (!this.passthrough) {
      this.push(new Float32Array(this.halfWidth + 1));
      this.resample();
    }
    if (this.filled > 0) this.post(this.chunk.subarray(0, this.filled));
    this.port.postMessage({ type: "flushed" });
    // Ready for the next utterance with fresh state.
    this.length = this.passthrough ? 0 : this.halfWidth;
    this.pos = this.halfWidth;
    this.input.fill(0, 0, this.length);
  }
}

registerProcessor("pcm-resampler", PcmResampler);
