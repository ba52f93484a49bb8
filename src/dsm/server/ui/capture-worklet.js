// AudioWorklet: the microphone, mixed to mono, low-passed and resampled to the model's rate
// (linear interpolation after a windowed-sinc anti-aliasing filter), posted to the page in
// frames of `frameSize` samples (Float32Array). The context runs at the device's own rate
// (Firefox cannot connect a microphone to a context of another rate), so the resampling is here.

const TAPS = 31;

function lowpass(ratio) {
  // Cut-off at 90% of the output Nyquist frequency, in cycles per input sample.
  const fc = 0.45 / ratio;
  const m = (TAPS - 1) / 2;
  const h = new Float32Array(TAPS);
  let sum = 0;
  for (let n = 0; n < TAPS; n++) {
    const x = n - m;
    const sinc = x === 0 ? 2 * fc : Math.sin(2 * Math.PI * fc * x) / (Math.PI * x);
    const w = 0.54 - 0.46 * Math.cos((2 * Math.PI * n) / (TAPS - 1)); // Hamming
    h[n] = sinc * w;
    sum += h[n];
  }
  for (let n = 0; n < TAPS; n++) h[n] /= sum;
  return h;
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions || {};
    this.outRate = opts.targetRate || 24000;
    this.frameSize = opts.frameSize || 1920;
    this.ratio = sampleRate / this.outRate; // input samples per output sample
    this.taps = this.ratio > 1 ? lowpass(this.ratio) : null;
    this.history = new Float32Array(TAPS - 1); // the filter's previous inputs
    this.last = 0; // the last filtered sample of the previous block
    this.t = 1; // next output position, in input samples after `last`
    this.frame = new Float32Array(this.frameSize);
    this.filled = 0;
    this.running = true;
    this.port.onmessage = (event) => {
      if (event.data && event.data.type === "flush") {
        this.running = false;
        const rest = this.frame.slice(0, this.filled);
        this.filled = 0;
        this.port.postMessage({ type: "flushed", pcm: rest }, [rest.buffer]);
      }
    };
  }

  filter(block) {
    if (!this.taps) return block;
    const n = block.length;
    const x = new Float32Array(this.history.length + n);
    x.set(this.history);
    x.set(block, this.history.length);
    const y = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      let acc = 0;
      for (let k = 0; k < TAPS; k++) acc += this.taps[k] * x[i + TAPS - 1 - k];
      y[i] = acc;
    }
    this.history = x.slice(n);
    return y;
  }

  emit(sample) {
    this.frame[this.filled++] = sample;
    if (this.filled === this.frameSize) {
      const out = this.frame;
      this.frame = new Float32Array(this.frameSize);
      this.filled = 0;
      this.port.postMessage({ type: "frame", pcm: out }, [out.buffer]);
    }
  }

  process(inputs) {
    if (!this.running) return false;
    const input = inputs[0];
    if (!input || input.length === 0 || input[0].length === 0) return true;
    const n = input[0].length;
    const mono = new Float32Array(n);
    for (const channel of input) for (let i = 0; i < n; i++) mono[i] += channel[i] / input.length;
    const y = this.filter(mono);
    // Positions: 0 is `last`, 1..n are y[0..n-1].
    while (this.t <= n) {
      const i = Math.floor(this.t);
      const frac = this.t - i;
      const a = i === 0 ? this.last : y[i - 1];
      const b = i < n ? y[i] : a;
      this.emit(a + (b - a) * frac);
      this.t += this.ratio;
    }
    this.t -= n;
    this.last = y[n - 1];
    return true;
  }
}

registerProcessor("dsm-capture", CaptureProcessor);
