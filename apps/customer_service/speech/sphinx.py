"""The embedded ASR backend: pocketsphinx (its US-English model ships in the wheel).

One decoder holds several searches and switches per utterance:
  ``_default``  the wheel's generic trigram LM
  ``bank``      the bank-domain trigram (``resources/bank.lm``, see :mod:`.lm`)
  ``digit`` / ``digits`` / ``amount``  JSGF grammars (:mod:`.grammars`)

``lm="interpolated"`` decodes with both LMs and keeps the hypothesis with the best total score
under the linear interpolation ``P = w P_bank + (1 - w) P_generic`` (per word, trigram history),
acoustic scores taken from the word segments of each pass (every senone scored, so that the two
passes' scores are comparable; see ``_decoder_options``). That is a two-candidate rescoring,
not a merged LM: pocketsphinx cannot interpolate inside its search, and a merged ARPA of the
generic model is tens of MB.

Why the front end pads and fills: the acoustic model was trained on 16 kHz speech with silence
around it. Clips trimmed to the word (FSDD) get ``pad_s`` of silence on each side, and audio
upsampled from 8 kHz (telephone, FSDD) has an empty 4-8 kHz band whose log filter energies sit
far below anything seen in training; a faint noise floor (``band_fill`` x peak) brings them back
into range. Both were measured on FSDD speakers other than the held-out ones.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from apps.customer_service.speech.asr import Transcript, Word, check_audio, confidence_of, silent_transcript
from apps.customer_service.speech.grammars import GRAMMARS, NARROW_BAND_PRONUNCIATIONS, NARROW_BAND_WORDS

RESOURCES = Path(__file__).resolve().parent / "resources"
_LN_BASE = math.log(1.0001)  # pocketsphinx's integer log base
_LOGZERO = -(2**28)


@dataclass
class SphinxConfig:
    lm: str = "generic"  # free-speech LM: "generic" | "bank" | "interpolated"
    interp_weight: float = 0.9  # bank LM weight under "interpolated"; tuned on held-out rows 60-89
    topn: int = 8  # Gaussians scored per frame; the wheel's 4 loses words on read speech
    fwdflat: bool = False  # the flat-lexicon second pass; off measured better and 2x faster
    bestpath: bool = True  # lattice pass: gives word posteriors (confidences)
    lw: float = 6.5  # language weight
    wip: float = 0.65  # word insertion penalty
    pad_s: float = 0.3  # silence added on both sides (trimmed clips)
    band_fill: float = 1e-2  # noise floor (x peak) for audio with nothing above 4 kHz; 0 = off
    maxhmmpf: int = 30000  # cap on active HMMs per frame: bounds the worst-case time per chunk
    beam: float = 1e-48  # main search beam (pocketsphinx default)
    bank_lm: str | None = None  # ARPA path; None = the shipped resources/bank.lm
    model_dir: str | None = None  # acoustic model folder; None = the wheel's en-us
    # mode "digit" (and "digits" when the caller pauses between digits): the learned digit CNN
    # (speech.digits) instead of the JSGF grammar; FSDD new speakers 0.835 (grammar) -> see its card
    digit_model: bool = True
    digit_bundle: str | None = None  # None = the shipped weights/digits

    @classmethod
    def from_name(cls, name: str) -> SphinxConfig:
        presets = {
            "default": cls(),
            "bank": cls(lm="bank"),
            "interpolated": cls(lm="interpolated"),
            # streaming: one fast pass, no lattice; partials every chunk must stay cheap
            # maxhmmpf 10000: p95 per 160 ms chunk on real read speech 96 -> 49 ms, same WER
            "streaming": cls(lm="bank", topn=4, bestpath=False, maxhmmpf=10_000),
            "tiny": cls(topn=2, bestpath=False),
        }
        if name not in presets:
            raise KeyError(f"unknown preset {name!r}; choose from {sorted(presets)}")
        return presets[name]


def _decoder_options(cfg: SphinxConfig) -> dict:
    opts = dict(loglevel="FATAL", topn=cfg.topn, fwdflat=cfg.fwdflat, bestpath=cfg.bestpath, lw=cfg.lw, wip=cfg.wip,
                maxhmmpf=cfg.maxhmmpf, beam=cfg.beam)
    if cfg.lm == "interpolated":
        # The rescoring compares the acoustic scores of two searches. pocketsphinx scales each frame's
        # senone scores by the best senone it computed, and each search computes only its active ones,
        # so without scoring every senone the two passes' scores sit on different scales (the bank
        # pass's read ~75 nats better for a wrong sentence) and the bank LM's words won on speech it
        # cannot model: RAVDESS sentences 0.39 WER with the generic LM, 0.73 interpolated (0.53 now). ~8 % more time.
        opts["compallsen"] = True
    if cfg.model_dir:
        opts["hmm"] = cfg.model_dir
    return opts


def read_dict(path: Path) -> list[tuple[str, str]]:
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            word, phones = line.split(maxsplit=1)
            entries.append((word, phones))
    return entries


def make_decoder(cfg: SphinxConfig):
    """A pocketsphinx Decoder with the bank words, the bank LM (if used) and every grammar."""
    from pocketsphinx import Decoder

    if cfg.lm not in ("generic", "bank", "interpolated"):
        raise ValueError(f"lm must be generic, bank or interpolated, not {cfg.lm!r}")
    opts = _decoder_options(cfg)
    if cfg.lm == "bank":
        opts["lm"] = None  # skip loading the 27 MB generic LM nobody will search
    dec = Decoder(**opts)
    entries = read_dict(RESOURCES / "bank.dict") + NARROW_BAND_PRONUNCIATIONS
    for k, (word, phones) in enumerate(entries):
        dec.add_word(word, phones, update=k == len(entries) - 1)
    if cfg.lm in ("bank", "interpolated"):
        dec.add_lm_file("bank", str(cfg.bank_lm or RESOURCES / "bank.lm"))
    for name, grammar in GRAMMARS.items():
        dec.add_jsgf_string(name, grammar)
    dec.activate_search("bank" if cfg.lm == "bank" else "_default")
    return dec


def condition(x: np.ndarray, cfg: SphinxConfig, rng: np.random.Generator | None = None) -> np.ndarray:
    """Pad with silence and fill an empty upper band (see module doc); float32 16 kHz in and out."""
    pad = np.zeros(int(cfg.pad_s * 16_000), dtype=np.float32)
    y = np.concatenate([pad, x, pad])
    if cfg.band_fill > 0 and is_band_limited(x):
        rng = rng or np.random.default_rng(0)
        y = y + (cfg.band_fill * float(np.abs(x).max() or 1.0)) * rng.standard_normal(len(y)).astype(np.float32)
    return y


def is_band_limited(x: np.ndarray, cutoff_hz: float = 4200.0) -> bool:
    """True when (almost) no energy lies above ``cutoff_hz``: upsampled narrow-band audio."""
    if len(x) < 512:
        return False
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / 16_000)
    total = spec.sum()
    # resampled 8 kHz audio leaves ~1e-14 of its energy up there, real wide-band speech >= 1e-6
    return bool(total > 0 and spec[freqs > cutoff_hz].sum() / total < 1e-8)


def _is_filler(word: str) -> bool:
    return word.startswith(("<", "[", "(")) or word in ("++", "")


def _base_word(word: str) -> str:
    word = word.split("(", 1)[0]  # "was(2)" is the second pronunciation of "was"
    return NARROW_BAND_WORDS.get(word, word)


class SphinxRecognizer:
    """pocketsphinx behind the :class:`~.asr.Recognizer` contract. Thread-safe (one lock)."""

    name = "pocketsphinx"

    def __init__(self, config: SphinxConfig | None = None) -> None:
        self.config = config or SphinxConfig()
        self._decoder = make_decoder(self.config)
        self._lock = threading.Lock()
        self._generic_lm = None
        self._bank_lm = None

    @property
    def version(self) -> str:
        import pocketsphinx

        return f"pocketsphinx-{getattr(pocketsphinx, '__version__', '5')}+{self.config.lm}"

    def describe(self) -> dict:
        return {"backend": self.name, **asdict(self.config)}

    def _search_for(self, mode: str) -> list[str]:
        if mode == "default":
            return {"generic": ["_default"], "bank": ["bank"], "interpolated": ["_default", "bank"]}[self.config.lm]
        if mode in GRAMMARS:
            return [mode]
        raise ValueError(f"unknown mode {mode!r}; choose default, digit, digits or amount")

    def transcribe(self, audio: np.ndarray, sample_rate: int = 16_000, *, mode: str = "default") -> Transcript:
        x = check_audio(audio, sample_rate)
        searches = self._search_for(mode)  # refuses an unknown mode, silent or not
        if (silent := silent_transcript(x, self.name, mode)) is not None:
            return silent
        t0 = time.perf_counter()
        if mode in ("digit", "digits") and self.config.digit_model:
            learned = self._learned_digits(x, mode)
            if learned is not None:
                words, version = learned
                return Transcript(words=words, confidence=confidence_of(words), backend=self.name, mode=mode,
                                  duration_s=len(x) / 16_000, decode_s=time.perf_counter() - t0,
                                  extra={"search": "digit-strings" if "digit-strings" in version else "digit-cnn",
                                         "digit_model": version})
        pcm = (np.clip(condition(x, self.config), -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        with self._lock:
            passes = [self._decode(pcm, s) for s in searches]
            chosen = passes[0] if len(passes) == 1 else max(passes, key=self._interpolated_score)
        duration = len(x) / 16_000
        words = [
            Word(_base_word(seg.word), max(0.0, seg.start_frame / 100 - self.config.pad_s),
                 min(duration, (seg.end_frame + 1) / 100 - self.config.pad_s), float(min(1.0, max(0.0, seg.prob))))
            for seg in chosen["segments"] if not _is_filler(seg.word)
        ]
        return Transcript(words=words, confidence=confidence_of(words), backend=self.name, mode=mode,
                          duration_s=duration, decode_s=time.perf_counter() - t0,
                          extra={"search": chosen["search"]})

    def _learned_digits(self, x: np.ndarray, mode: str) -> tuple[list[Word], str] | None:
        """Words from the digit CNN, or None when the grammar should decide (digit strings
        without clear pauses between the digits)."""
        from apps.customer_service.speech.digits import learned_digit_words

        return learned_digit_words(x, mode, self.config.digit_bundle, hint=lambda: self._grammar_digit(x),
                                   segment_hint=self._grammar_digit)

    def _grammar_digit(self, x: np.ndarray) -> int | None:
        """The single-digit grammar's answer for ``x`` (16 kHz), or None when it heard no one digit."""
        from apps.customer_service.speech.grammars import DIGIT_VALUES

        pcm = (np.clip(condition(x, self.config), -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        with self._lock:
            decoded = self._decode(pcm, "digit")
        words = [_base_word(s.word) for s in decoded["segments"] if not _is_filler(s.word)]
        return DIGIT_VALUES.get(words[0]) if len(words) == 1 else None

    def _decode(self, pcm: bytes, search: str) -> dict:
        dec = self._decoder
        dec.activate_search(search)
        dec.start_utt()
        dec.process_raw(pcm, full_utt=True)
        dec.end_utt()
        segments = list(dec.seg()) if dec.hyp() is not None else []
        return {"search": search, "segments": segments}

    # -- interpolation ------------------------------------------------------------------------

    def _lms(self):
        if self._generic_lm is None:
            from pocketsphinx import NGramModel

            self._generic_lm = self._decoder.get_lm("_default")
            if self._generic_lm is None:  # the default search was replaced: load the wheel's LM again
                from pocketsphinx import get_model_path

                self._generic_lm = NGramModel(self._decoder.config, self._decoder.logmath,
                                              str(Path(get_model_path()) / "en-us" / "en-us.lm.bin"))
            self._bank_lm = self._decoder.get_lm("bank")
        return self._generic_lm, self._bank_lm

    def interpolated_logprob(self, words: list[str]) -> float:
        """ln P(words) under w P_bank + (1 - w) P_generic, trigram history, <s> ... </s>."""
        generic, bank = self._lms()
        w = self.config.interp_weight
        seq = ["<s>", *words, "</s>"]
        total = 0.0
        for i in range(1, len(seq)):
            ctx = [seq[i], *reversed(seq[max(0, i - 2):i])]  # pocketsphinx wants word, then history newest first
            p = 0.0
            for model, weight in ((generic, 1 - w), (bank, w)):
                raw = model.prob(ctx)
                if raw > _LOGZERO // 2:
                    p += weight * math.exp(raw * _LN_BASE)
            total += math.log(max(p, 1e-300))
        return total

    def _interpolated_score(self, decoded: dict) -> float:
        segs = decoded["segments"]
        if not segs:
            return -math.inf
        acoustic = sum(math.log(max(s.ascore, 1e-300)) for s in segs)
        words = [_base_word(s.word) for s in segs if not _is_filler(s.word)]
        return acoustic + self.config.lw * self.interpolated_logprob(words) + len(words) * math.log(self.config.wip)
