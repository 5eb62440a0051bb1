"""Streaming recognition: 16-bit PCM chunks in, partial and final hypotheses out.

A voice-activity endpointer (pocketsphinx's WebRTC-style VAD, 30 ms frames) cuts the stream into
utterances. Inside an utterance every chunk is decoded incrementally and a ``partial`` event is
emitted whenever the best hypothesis changes; when the endpointer hears enough silence the
utterance is closed and a ``final`` event carries its words with stream-relative timestamps and
posteriors. Decoders take ~2 s to build (lexicon trees), so sessions borrow them from a
:class:`DecoderPool` instead of building their own.
"""

from __future__ import annotations

import asyncio
import math
import queue
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from apps.customer_service.speech.asr import Word, confidence_of
from apps.customer_service.speech.sphinx import SphinxConfig, _base_word, _is_filler, make_decoder


@dataclass
class StreamEvent:
    type: str  # "partial" | "final"
    text: str
    start: float  # seconds from the start of the stream
    end: float
    words: list[Word] = field(default_factory=list)  # finals only
    confidence: float = 0.0  # finals only
    samples: np.ndarray | None = field(default=None, repr=False)  # a final's 16 kHz audio, with keep_audio

    def to_dict(self) -> dict:
        return {"type": self.type, "text": self.text, "start": round(self.start, 3), "end": round(self.end, 3),
                "confidence": round(self.confidence, 4),
                "words": [{"text": w.text, "start": round(w.start, 3), "end": round(w.end, 3),
                           "confidence": round(w.confidence, 4)} for w in self.words]}


class DecoderPool:
    """Ready pocketsphinx decoders for streaming sessions (one decoder serves one session at a time)."""

    def __init__(self, config: SphinxConfig | None = None, size: int = 2) -> None:
        self.config = config or SphinxConfig.from_name("streaming")
        self.size = size
        self._idle: queue.Queue = queue.Queue()
        self._made = 0
        self._lock = threading.Lock()

    def acquire(self, timeout_s: float = 10.0):
        """A decoder, built if the pool has room for one more; blocks the calling thread while all are busy
        (TimeoutError after ``timeout_s``). On an event loop use :meth:`acquire_async`."""
        decoder = self._take_idle()
        if decoder is not None:
            return decoder
        if self._reserve_new():
            return self._build_reserved()
        try:
            return self._idle.get(timeout=timeout_s)
        except queue.Empty as exc:
            raise TimeoutError(f"all {self.size} streaming decoders are busy") from exc

    async def acquire_async(self, timeout_s: float = 10.0, poll_s: float = 0.05):
        """:meth:`acquire` for an event loop. The wait for a busy pool is spent on the loop, not in a worker
        thread: a thread blocked in acquire() is one fewer for every asyncio.to_thread of the process, and a few
        clients waiting for a decoder held all of them (live calls and other apps' uploads stalled for the whole
        wait). Only building a new decoder (about 2 s, at most ``size`` times) runs in a thread."""
        deadline = time.monotonic() + timeout_s
        while True:
            decoder = self._take_idle()
            if decoder is not None:
                return decoder
            if self._reserve_new():
                building = asyncio.ensure_future(asyncio.to_thread(self._build_reserved))
                try:
                    return await asyncio.shield(building)
                except asyncio.CancelledError:
                    building.add_done_callback(self._keep_abandoned)  # a caller that left must not strand it
                    raise
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                raise TimeoutError(f"all {self.size} streaming decoders are busy")
            await asyncio.sleep(min(poll_s, left_s))

    def release(self, decoder) -> None:
        self._idle.put(decoder)

    def _take_idle(self):
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return None

    def _reserve_new(self) -> bool:
        with self._lock:
            if self._made < self.size:
                self._made += 1
                return True
            return False

    def _build_reserved(self):
        try:
            return make_decoder(self.config)
        except BaseException:
            with self._lock:  # give the place back: a failed build must not shrink the pool for good
                self._made -= 1
            raise

    def _keep_abandoned(self, building: asyncio.Future) -> None:
        if not building.cancelled() and building.exception() is None:
            self.release(building.result())


class StreamingRecognizer:
    """Feed little-endian 16-bit mono PCM at 16 kHz with :meth:`accept`; call :meth:`finish` at the end.

    ``mode`` picks the search: "default" (the config's free-speech LM) or a grammar ("digits" ...).
    In the digit modes, with ``config.digit_model``, each final is re-decided by the learned digit
    recogniser on the utterance's audio (the grammar's answer is its hint), as ``transcribe`` does;
    partials stay the grammar's. ``chunk`` sizes are free; 100-200 ms is what the WebSocket clients send.
    ``keep_audio``: each final carries its utterance's samples (for the voice reading of a live call).
    ``decoder``: one already taken from ``pool`` (with :meth:`DecoderPool.acquire_async`); it goes back to
    ``pool`` at :meth:`close`.
    """

    def __init__(self, config: SphinxConfig | None = None, *, mode: str = "default", pool: DecoderPool | None = None,
                 vad_mode: int = 1, endpoint_window_s: float = 0.5, max_utterance_s: float = 30.0,
                 partial_every_s: float = 0.0, keep_audio: bool = False, decoder=None) -> None:
        from pocketsphinx import Endpointer

        self.config = config or (pool.config if pool else SphinxConfig.from_name("streaming"))
        self._pool = pool
        if decoder is None:
            decoder = pool.acquire() if pool else make_decoder(self.config)
        self._decoder = decoder
        search = {"generic": "_default", "bank": "bank", "interpolated": "bank"}[self.config.lm] if mode == "default" else mode
        self._decoder.activate_search(search)
        self.mode = mode
        self.keep_audio = keep_audio
        self._ep = Endpointer(window=endpoint_window_s, ratio=0.9, vad_mode=vad_mode)
        self._frame_bytes = self._ep.frame_bytes
        self._buf = b""
        self._in_utt = False
        self._utt_start = 0.0
        self._last_partial = ""
        self._utt_samples = 0
        self._utt_pcm = bytearray()  # kept in the digit modes (the learned digit recogniser) and with keep_audio
        self._max_utt_samples = int(max_utterance_s * 16_000)
        self.chunk_latencies_ms: list[float] = []
        self.closed = False
        # a server may close a session (client gone) while a chunk is still being decoded in a
        # worker thread: the decoder must not go back to the pool mid-decode
        self._busy = threading.RLock()

    # -- public -------------------------------------------------------------------------------

    def accept(self, chunk: bytes) -> list[StreamEvent]:
        """Process one chunk; returns the events it caused (possibly none)."""
        with self._busy:
            return self._accept(chunk)

    def _accept(self, chunk: bytes) -> list[StreamEvent]:
        if self.closed:
            raise RuntimeError("stream already finished")
        if len(chunk) % 2:
            raise ValueError("16-bit PCM chunks need an even number of bytes")
        t0 = time.perf_counter()
        events: list[StreamEvent] = []
        self._buf += chunk
        n = len(self._buf) // self._frame_bytes * self._frame_bytes
        frames, self._buf = self._buf[:n], self._buf[n:]
        speech = bytearray()
        for off in range(0, len(frames), self._frame_bytes):
            out = self._ep.process(frames[off:off + self._frame_bytes])
            if out is not None:
                if not self._in_utt:
                    self._start_utt()
                speech += out
            elif self._in_utt and not self._ep.in_speech:
                self._process(bytes(speech))
                speech = bytearray()
                events.append(self._end_utt())
        if speech:
            self._process(bytes(speech))
            if self._utt_samples >= self._max_utt_samples:
                events.append(self._end_utt())
        if self._in_utt:
            partial = self._partial()
            if partial is not None:
                events.append(partial)
        self.chunk_latencies_ms.append((time.perf_counter() - t0) * 1000.0)
        return events

    def finish(self) -> list[StreamEvent]:
        """Flush the endpointer and close the current utterance; releases the decoder."""
        with self._busy:
            return self._finish()

    def _finish(self) -> list[StreamEvent]:
        if self.closed:
            return []
        events = []
        try:
            if self._in_utt or self._buf:
                # end_stream indexes into its argument, so an empty tail (the stream ended on a
                # frame boundary) is replaced by one frame of silence to flush the window.
                tail = self._ep.end_stream(self._buf or bytes(self._frame_bytes)) if self._in_utt else None
                if tail:
                    self._process(tail)
                if self._in_utt:
                    events.append(self._end_utt())
        finally:
            self.close()
        return events

    def close(self) -> None:
        """Release the decoder (waits for a chunk being decoded); safe to call more than once."""
        with self._busy:
            self._close()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._in_utt:
                try:
                    self._decoder.end_utt()
                except RuntimeError:
                    pass
            if self._pool is not None:
                self._pool.release(self._decoder)

    # -- internals ----------------------------------------------------------------------------

    def _start_utt(self) -> None:
        self._decoder.start_utt()
        self._in_utt = True
        self._utt_start = float(self._ep.speech_start)
        self._utt_samples = 0
        self._utt_pcm = bytearray()
        self._last_partial = ""

    def _process(self, pcm: bytes) -> None:
        if pcm:
            self._decoder.process_raw(pcm, full_utt=False)
            self._utt_samples += len(pcm) // 2
            if self.mode in ("digit", "digits") or self.keep_audio:
                self._utt_pcm += pcm

    def _partial(self) -> StreamEvent | None:
        hyp = self._decoder.hyp()
        # the lexicon's variants ("sixnarrow", "was(2)") read as the word they stand for, as in finals:
        # a raw "sixnarrow" also broke a spoken card number apart, so the redactor missed its end
        text = " ".join(_base_word(w) for w in hyp.hypstr.split()) if hyp is not None else ""
        if text == self._last_partial:
            return None
        self._last_partial = text
        return StreamEvent("partial", text, self._utt_start, self._utt_start + self._utt_samples / 16_000)

    def _end_utt(self) -> StreamEvent:
        dec = self._decoder
        dec.end_utt()
        self._in_utt = False
        words = []
        if dec.hyp() is not None:
            for seg in dec.seg():
                if _is_filler(seg.word):
                    continue
                prob = seg.prob if self.config.bestpath else 1.0
                words.append(Word(_base_word(seg.word), self._utt_start + seg.start_frame / 100,
                                  self._utt_start + (seg.end_frame + 1) / 100, float(min(1.0, max(0.0, prob)))))
        end = self._utt_start + self._utt_samples / 16_000
        samples = np.frombuffer(bytes(self._utt_pcm), dtype="<i2").astype(np.float32) / 32768.0 if self.keep_audio else None
        learned = self._learned_digits(words)
        if learned is not None:
            return StreamEvent("final", " ".join(w.text for w in learned), self._utt_start, end, learned,
                               confidence_of(learned), samples)
        return StreamEvent("final", " ".join(w.text for w in words), self._utt_start, end, words,
                           confidence_of(words) if self.config.bestpath else 0.0, samples)

    def _learned_digits(self, grammar_words: list[Word]) -> list[Word] | None:
        """The digit CNN's words for the finished utterance (times in the stream), or None to keep
        the grammar's: other modes, the model switched off or not shipped, or digits run together."""
        if self.mode not in ("digit", "digits") or not self.config.digit_model or len(self._utt_pcm) < 320:
            return None
        from apps.customer_service.speech.digits import learned_digit_words
        from apps.customer_service.speech.grammars import DIGIT_VALUES

        x = np.frombuffer(bytes(self._utt_pcm), dtype="<i2").astype(np.float32) / 32768.0
        # the stream's own decoder ran the digit grammar: its final is the hint (no per-segment hints)
        hint = (lambda: DIGIT_VALUES.get(grammar_words[0].text)) if len(grammar_words) == 1 else None
        learned = learned_digit_words(x, self.mode, self.config.digit_bundle, hint=hint)
        if learned is None:
            return None
        words, _ = learned
        return [Word(w.text, self._utt_start + w.start, self._utt_start + w.end, w.confidence) for w in words]


def percentile(values: list[float], q: float) -> float:
    """The q-quantile of ``values``, linearly interpolated (nan when empty)."""
    s = sorted(values)
    if not s:
        return math.nan
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def default_bench_audio() -> list[np.ndarray]:
    """Three bank-call sentences spoken by espeak-ng, 16 kHz float32 (silence between them)."""
    from apps.customer_service.speech.audio import load_audio
    from apps.customer_service.speech.tts import synthesize

    lines = ["Hello, I am calling because my card has not arrived yet.",
             "I was charged twice for the same payment of twenty pounds.",
             "Can you please block my card, I think it has been stolen."]
    gap = np.zeros(8_000, dtype=np.float32)
    clips = [load_audio(synthesize(t, voice="en-us+klatt")).mono() for t in lines]
    return [np.concatenate([gap] + [c for clip in clips for c in (clip, gap)])]


def bench_streaming(audio: list[str | Path | np.ndarray] | None = None, *, chunk_ms: int = 160, repeats: int = 1,
                    config: SphinxConfig | None = None, mode: str = "default") -> dict:
    """Per-chunk processing latency of :class:`StreamingRecognizer`, chunks fed back to back.

    ``audio``: files (any format :func:`~.audio.load_audio` reads) or 16 kHz float arrays; by
    default three synthetic bank sentences. Returns a flat dict: ``chunk_p50_ms``,
    ``chunk_p95_ms``, ``chunk_max_ms``, ``chunks``, ``audio_s``, ``rtf``, ``first_partial_ms``
    (processing time until the first partial), ``finals``, ``decoder_build_s``.
    """
    from apps.customer_service.speech.audio import load_audio

    clips = []
    for item in audio if audio is not None else default_bench_audio():
        clips.append(np.asarray(item, dtype=np.float32) if isinstance(item, np.ndarray) else load_audio(item).mono())
    cfg = config or SphinxConfig.from_name("streaming")
    t0 = time.perf_counter()
    pool = DecoderPool(cfg, size=1)
    pool.release(pool.acquire())  # build outside the measured loop, as a server does at start-up
    build_s = time.perf_counter() - t0
    step = int(16_000 * chunk_ms / 1000)
    latencies, first_partials, finals, total_audio, total_proc = [], [], 0, 0.0, 0.0
    for _ in range(max(1, repeats)):
        for clip in clips:
            pcm = (np.clip(clip, -1, 1) * 32767).astype("<i2").tobytes()
            rec = StreamingRecognizer(cfg, mode=mode, pool=pool)
            spent, first = 0.0, None
            for off in range(0, len(pcm), step * 2):
                events = rec.accept(pcm[off:off + step * 2])
                spent += rec.chunk_latencies_ms[-1]
                if first is None and any(e.type == "partial" and e.text for e in events):
                    first = spent
                finals += sum(e.type == "final" for e in events)
            t1 = time.perf_counter()
            finals += sum(e.type == "final" for e in rec.finish())
            spent += (time.perf_counter() - t1) * 1000
            latencies += rec.chunk_latencies_ms
            total_proc += spent / 1000
            total_audio += len(clip) / 16_000
            if first is not None:
                first_partials.append(first)
    return {
        "chunk_ms": float(chunk_ms),
        "chunks": float(len(latencies)),
        "chunk_p50_ms": percentile(latencies, 0.50),
        "chunk_p95_ms": percentile(latencies, 0.95),
        "chunk_max_ms": max(latencies) if latencies else math.nan,
        "chunk_mean_ms": statistics.fmean(latencies) if latencies else math.nan,
        "audio_s": total_audio,
        "rtf": total_proc / total_audio if total_audio else math.nan,
        "first_partial_ms": statistics.fmean(first_partials) if first_partials else math.nan,
        "finals": float(finals),
        "decoder_build_s": build_s,
    }
