// AudioWorklet: the microphone at the context's rate (44.1 or 48 kHz) -> 16 kHz mono 16-bit PCM
// chunks for the streaming recogniser. Each output sample is the mean of the input samples of its
// 1/16000 s window (a box low-pass, enough against aliasing for speech recognition).
"use strict";

class Pcm16k extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.ratio = sampleRate / 16000;
    this.size = (options.processorOptions && options.processorOptions.chunkSamples) || 2560;
    this.chunk = new Int16Array(this.size);
    this.filled = 0;
    this.sum = 0;
    this.count = 0;
    this.seen = 0;  // input samples so far
    this.closeAt = this.ratio;  // input position at which the current output sample is complete
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const x = channels[0];
    for (let i = 0; i < x.length; i++) {
      this.sum += x[i];
      this.count += 1;
      this.seen += 1;
      if (this.seen >= this.closeAt) {
        const v = Math.max(-1, Math.min(1, this.sum / this.count));
        this.chunk[this.filled++] = Math.round(v * 32767);
        this.sum = 0;
        this.count = 0;
        this.closeAt += this.ratio;
        if (this.filled === this.size) {
          // transferred, not copied: the sent buffer is detached here (its length reads 0 afterwards)
          this.port.postMessage(this.chunk.buffer, [this.chunk.buffer]);
          this.chunk = new Int16Array(this.size);
          this.filled = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor("pcm-16k", Pcm16k);
