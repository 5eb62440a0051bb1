"""ASR evaluation over the three layouts the project meets, read exactly as published.

* LibriSpeech: ``<root>/**/<spk>-<chapter>.trans.txt`` with lines ``<utt-id> WORDS``; audio
  ``<utt-id>.flac`` (or .wav) beside it.
* FSDD: ``<root>/recordings/{digit}_{speaker}_{i}.wav`` (or ``<root>`` is that folder); the
  transcript is the digit word; decoded with the digit grammar; adds ``digit_accuracy``.
* Sphinx test data: ``<root>/**/*.transcription`` with lines ``<s> words </s> (utt-id)``; audio
  ``<utt-id>.wav`` beside it, or at the paths of the sibling ``*fileids`` (also under ``../wav/``,
  sphinxtrain's ``etc/`` + ``wav/`` layout).
* sphinxtrain: ``<root>/etc/<name>.transcription`` (``<s> words </s> (utt-id)`` or ``words (utt-id)``) with
  ``<root>/etc/<name>.fileids`` (one path a line, relative to ``wav/``, no extension) and audio
  ``<root>/wav/<fileid>.wav``. A transcription with a fileids of its own name is read line by line beside it,
  as sphinxtrain reads them: the two must agree in length and in each utterance's id (the fileid's last part),
  so two speakers' ``001`` never share one recording.
* In both Sphinx layouts a reference keeps only its words: the filler dictionary's non-speech entries (``<s>``,
  ``</s>``, ``<sil>``, ``++NOISE++``-style noises, ``+NOISE+``, pocketsphinx's ``[NOISE]`` / ``[SPEECH]``) are
  dropped and a pronunciation variant (``read(2)``) is read as its word, as the pocketsphinx backend reads its own
  output. ``<unk>`` (a word the LM lacked, but a word said) and bracketed words such as ``[laughter-yes]`` stay.

An utterance whose audio is missing is refused (:class:`MissingAudio`, both a ``FileNotFoundError`` and a
``ValueError``) with the transcript and the utterance named.

Scoring text normalisation (applied to reference and hypothesis alike, as Whisper's English
normaliser does): lower case, punctuation dropped, hyphens split, a few spelling variants unified
("mr" -> "mister"). WER is corpus-level: total edits / total reference words.

Trees may come from another OS: extensions match in any case (``.WAV``, ``.FLAC``), and hidden files
and folders (macOS ``._<name>`` AppleDouble copies, ``.DS_Store``) are never read as data.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from apps.customer_service.speech.grammars import DIGIT_VALUES
from core.data import dataset_files

_DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$", re.IGNORECASE)
_VARIANTS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "ok": "okay"}


def scoring_text(text: str) -> str:
    t = text.lower().replace("-", " ")
    t = re.sub(r"[^a-z0-9' ]+", " ", t)
    words = [_VARIANTS.get(w, w) for w in (w.strip("'") for w in t.split()) if w]
    return " ".join(words)


class MissingAudio(FileNotFoundError, ValueError):
    """A transcript names an utterance whose audio is not there: the dataset given is incomplete."""


def _is_data_file(name: str, ending: str) -> bool:
    """Not hidden and ending in ``ending`` in any case: a ``._x.trans.txt`` AppleDouble file holds binary
    resource data under a transcript's name."""
    return not name.startswith(".") and name.lower().endswith(ending)



def _files_in(folder: Path, ending: str) -> list[Path]:
    if not folder.is_dir():  # a file given as the dataset: find_layout then says what layouts it expects
        return []
    return sorted(p for p in folder.iterdir() if _is_data_file(p.name, ending) and p.is_file())


def _read_text(path: Path) -> str:
    """UTF-8 text (a leading BOM dropped), refused with the file's name when it is not."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _audio_file(stem: Path, extensions: tuple[str, ...], listings: dict[Path, dict[str, Path]]) -> Path | None:
    """``stem`` + the first of ``extensions`` present, compared without case (``.FLAC`` counts as ``.flac``).
    ``listings`` caches each folder's visible names: a chapter holds one transcript for dozens of files."""
    folder = stem.parent
    if folder not in listings:
        listings[folder] = ({p.name.lower(): p for p in folder.iterdir() if not p.name.startswith(".")}
                            if folder.is_dir() else {})
    names = listings[folder]
    return next((names[f"{stem.name}{ext}".lower()] for ext in extensions if f"{stem.name}{ext}".lower() in names), None)


def find_layout(root: Path) -> str:
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist")
    rec = root / "recordings" if (root / "recordings").is_dir() else root
    if any(_FSDD_NAME.match(p.name) for p in _files_in(rec, ".wav")):
        return "fsdd"
    if dataset_files(root, ".trans.txt"):
        return "librispeech"
    if dataset_files(root, "transcription"):
        return "sphinx"
    raise ValueError(f"{root}: no LibriSpeech *.trans.txt, FSDD recordings/ or Sphinx *.transcription found")


def librispeech_items(root: Path) -> list[tuple[Path, str]]:
    items, listings = [], {}
    for trans in dataset_files(root, ".trans.txt"):
        for line in _read_text(trans).splitlines():
            if not line.strip():
                continue
            utt, _, words = line.strip().partition(" ")
            audio = _audio_file(trans.parent / utt, (".flac", ".wav"), listings)
            if audio is None:
                raise MissingAudio(f"{trans}: no audio for {utt} (.flac or .wav)")
            items.append((audio, words))
    return items


_TRANSCRIPTION_LINE = re.compile(r"^(.*?)\s*\(([^()]+)\)\s*$")
# sphinxtrain's filler-dictionary entries: silences, noises written ++NOISE++ (older databases +NOISE+), and the
# en-us model's [NOISE] / [SPEECH]. A recogniser writes none of them, so each one kept in a reference ("<sil>" is
# scored as "sil") counted as a word the recogniser missed.
_NON_SPEECH = re.compile(r"</?s>|<sil>|\+\+\w+\+\+|\+\w+\+|\[[A-Za-z_]+\]", re.IGNORECASE)
# "read(2)": the second pronunciation of "read" in the dictionary (aligned transcripts carry it)
_PRONUNCIATION_VARIANT = re.compile(r"\(\d+\)$")


def _paired_fileids(trans: Path) -> Path | None:
    """sphinxtrain's ``<name>.fileids`` beside ``<name>.transcription`` (the name compared without case)."""
    stem = trans.name[:-len("transcription")].lower()
    return next((f for f in _files_in(trans.parent, "fileids") if f.name[:-len("fileids")].lower() == stem), None)


def _transcription_pairs(trans: Path) -> list[tuple[str, str, str]]:
    """(utterance id, fileid, words) for each utterance of ``trans``. With a fileids of its own name, line i of
    one is line i of the other (sphinxtrain's rule), checked by the id; otherwise each line's id is looked up
    among the fileids beside it by its last part (the pocketsphinx test data), or stands for itself."""
    lines = [line.strip() for line in _read_text(trans).splitlines() if line.strip()]
    paired = _paired_fileids(trans)
    if paired is not None:
        fileids = [line.strip() for line in _read_text(paired).splitlines() if line.strip()]
        if len(fileids) != len(lines):
            raise ValueError(f"{trans} has {len(lines)} utterances but {paired} lists {len(fileids)}: "
                             "sphinxtrain pairs them line by line")
        out = []
        for n, (line, fileid) in enumerate(zip(lines, fileids), 1):
            m = _TRANSCRIPTION_LINE.match(line)
            utt, words = (m.group(2).strip(), m.group(1)) if m else (Path(fileid).name, line)
            if utt not in (fileid, Path(fileid).name):
                raise ValueError(f"{trans} line {n} is utterance {utt!r} but line {n} of {paired} is {fileid!r}")
            out.append((utt, fileid, words))
        return out
    fileids = {}
    for ids in _files_in(trans.parent, "fileids"):
        for line in _read_text(ids).split():
            fileids[Path(line).name] = line
    out = []
    for line in lines:
        m = _TRANSCRIPTION_LINE.match(line)
        if m:
            utt = m.group(2).strip()
            out.append((utt, fileids.get(utt, utt), m.group(1)))
    return out


def _spoken_words(transcript: str) -> str:
    """A sphinxtrain transcript's words alone: non-speech entries dropped, pronunciation variants read as their word."""
    words = re.sub(r"</?s>", " ", transcript, flags=re.IGNORECASE).split()  # "<s>hello" too: marks may touch a word
    return " ".join(_PRONUNCIATION_VARIANT.sub("", w) for w in words if not _NON_SPEECH.fullmatch(w))


def sphinx_items(root: Path) -> list[tuple[Path, str]]:
    items, listings = [], {}
    for trans in dataset_files(root, "transcription"):
        for utt, fileid, words in _transcription_pairs(trans):
            # sphinxtrain's own layout keeps etc/<db>.transcription beside wav/<fileid>.wav; the fileid first, so
            # that spk1/001 and spk2/001 (utterance 001 both) each find their own recording
            stems = [trans.parent / fileid, trans.parent.parent / "wav" / fileid, trans.parent.parent / fileid, trans.parent / utt]
            audio = next((a for a in (_audio_file(stem, (".wav",), listings) for stem in stems) if a), None)
            if audio is None:
                raise MissingAudio(f"{trans}: no audio for {utt} (fileid {fileid}; looked for "
                                   f"{trans.parent.parent / 'wav' / fileid}.wav and beside the transcription)")
            items.append((audio, _spoken_words(words)))
    return items


def fsdd_items(root: Path, exclude_speakers: set[str] | frozenset[str] = frozenset()) -> list[tuple[Path, str]]:
    rec = Path(root) / "recordings" if (Path(root) / "recordings").is_dir() else Path(root)
    items = []
    for path in _files_in(rec, ".wav"):
        m = _FSDD_NAME.match(path.name)
        if m and m.group(2) not in exclude_speakers:
            items.append((path, _DIGIT_NAMES[int(m.group(1))]))
    return items


def evaluate_asr(root: str | Path, *, recognizer=None, limit: int | None = None,
                 exclude_speakers: set[str] | frozenset[str] = frozenset(), telephone: bool = False,
                 workers: int = 1, backend: str = "pocketsphinx", model_path: str | Path | None = None,
                 vad: bool = True) -> dict:
    """WER (and digit accuracy for FSDD) of ``recognizer`` (default: ``create_recognizer(backend,
    model_path=...)``, i.e. pocketsphinx with its generic LM) on the dataset at ``root``. Returns a flat
    dict of numbers: ``wer``, ``wer_normalised`` (both sides through openai-whisper's English normaliser,
    which writes numbers, currencies and spellings one way: fair to a recogniser that writes "10" where
    the reference says "ten"), ``utterances``, ``ref_words``, ``rtf`` (decoding seconds per second of
    audio, one decoder), ``wall_s``, ``workers``, ``mean_confidence`` and, for FSDD, ``digit_accuracy``.
    ``telephone``: every recording is first band-limited as a narrow-band (8 kHz) phone line
    delivers it. ``workers``: the default recogniser in that many processes, each with its own
    decoder (a LibriSpeech test set is hours of audio); the same numbers for any count. A given
    ``recognizer`` always runs in this process. ``vad``: whisper and seq2seq decode only speech, as served."""
    import jiwer

    root = Path(root)
    layout = find_layout(root)
    items = {"fsdd": lambda: fsdd_items(root, exclude_speakers), "librispeech": lambda: librispeech_items(root),
             "sphinx": lambda: sphinx_items(root)}[layout]()
    if limit and limit < len(items):
        # evenly spaced, so a limited FSDD run still covers every digit and speaker
        step = len(items) / limit
        items = [items[int(i * step)] for i in range(limit)]
    if not items:
        raise ValueError(f"{root}: no utterances found ({layout} layout)")
    mode = "digit" if layout == "fsdd" else "default"
    tasks = [(path, ref, mode, telephone, backend, None if model_path is None else str(model_path), vad)
             for path, ref in items]
    t0 = time.perf_counter()
    parallel = recognizer is None and workers > 1 and len(tasks) > 1
    if not parallel:
        if recognizer is None:  # a fresh one per run: a decoder carries state (its cepstral mean) across utterances
            from apps.customer_service.speech.asr import create_recognizer, vad_option

            recognizer = create_recognizer(backend, model_path=model_path, **vad_option(backend, vad))
        rows = [_decode_one(task, recognizer) for task in tasks]
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: a forked child would inherit the parent's torch threads and locks
        with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_one_torch_thread) as pool:
            rows = list(pool.map(_decode_one, tasks, chunksize=max(1, len(tasks) // (8 * workers))))
    wall = time.perf_counter() - t0
    refs, hyps = [r["ref"] for r in rows], [r["hyp"] for r in rows]
    audio_s = sum(r["audio_s"] for r in rows)
    out = jiwer.process_words(refs, hyps)
    from whisper.normalizers import EnglishTextNormalizer

    normalise = EnglishTextNormalizer()
    pairs = [(normalise(r["ref_raw"]), normalise(r["hyp_raw"])) for r in rows]
    kept = [(a, b) for a, b in pairs if a.strip()]
    result = {
        "wer": float(out.wer),
        "wer_normalised": float(jiwer.wer([a for a, _ in kept], [b for _, b in kept])) if kept else 0.0,
        "utterances": float(len(items)),
        "ref_words": float(sum(len(r.split()) for r in refs)),
        "substitutions": float(out.substitutions),
        "deletions": float(out.deletions),
        "insertions": float(out.insertions),
        "rtf": sum(r["seconds"] for r in rows) / audio_s if audio_s else 0.0,
        "wall_s": wall,
        "workers": float(min(workers, len(tasks)) if parallel else 1),
        "mean_confidence": float(sum(r["confidence"] for r in rows) / len(rows)),
        "telephone_band": float(telephone),
    }
    if layout == "fsdd":
        result["digit_accuracy"] = sum(r["digit_right"] for r in rows) / len(items)
    from apps.customer_service.speech.asr import VAD_BACKENDS

    heard_only_speech = getattr(recognizer, "vad", None) if recognizer is not None else (
        vad if backend in VAD_BACKENDS else None)
    if heard_only_speech is not None:
        result["vad"] = float(heard_only_speech)
    return result


def _one_torch_thread() -> None:
    """Workers split the cores between them: the digit models' torch ops must not each take them all."""
    import torch

    torch.set_num_threads(1)


_WORKER_RECOGNIZERS: dict[tuple, object] = {}  # per worker process, one per (backend, model path, vad), made on first use


def _decode_one(task: tuple, recognizer=None) -> dict:
    """One utterance of ``evaluate_asr``: its scoring texts, confidence, audio and decoding seconds."""
    from apps.customer_service.speech.audio import load_audio, telephone_band

    path, ref, mode, telephone, backend, model_path, vad = task
    if recognizer is None:
        if (backend, model_path, vad) not in _WORKER_RECOGNIZERS:
            from apps.customer_service.speech.asr import create_recognizer, vad_option

            _WORKER_RECOGNIZERS[backend, model_path, vad] = create_recognizer(
                backend, model_path=model_path, **vad_option(backend, vad))
        recognizer = _WORKER_RECOGNIZERS[backend, model_path, vad]
    audio = load_audio(path)
    samples = telephone_band(audio.mono(), audio.sample_rate) if telephone else audio.mono()
    t0 = time.perf_counter()
    tr = recognizer.transcribe(samples, audio.sample_rate, mode=mode)
    seconds = time.perf_counter() - t0
    ref_s, hyp_s = scoring_text(ref), scoring_text(tr.text)
    digit_right = False
    if mode == "digit":  # FSDD: "oh" and "zero" both say 0; a recogniser may write "7." (Whisper) or "seven"
        words = [_DIGIT_NAMES[int(w)] if len(w) == 1 and w.isdigit() else w for w in hyp_s.split()]
        hyp_s = " ".join(_DIGIT_NAMES[DIGIT_VALUES[w]] if w in DIGIT_VALUES else w for w in words)
        digit_right = len(words) == 1 and DIGIT_VALUES.get(words[0]) == DIGIT_VALUES[ref]
    return {"ref": ref_s, "hyp": hyp_s, "ref_raw": ref, "hyp_raw": tr.text, "confidence": tr.confidence, "audio_s": audio.duration_s,
            "seconds": seconds, "digit_right": digit_right}


def evaluate_spoken_card_redaction(n: int = 40, *, seed: int = 0, recognizer=None, voice: str = "en-us+klatt") -> dict:
    """End-to-end privacy check: espeak-ng reads "my card number is <16 Luhn-valid digits>", the
    recogniser transcribes it, :func:`pii.redact_words` redacts it. ``card_leak_free`` is the
    share of calls where no four consecutive true digits survive in the redacted text;
    ``card_fully_redacted`` the share with no digit of the number left at all;
    ``digit_wer`` the recogniser's WER on the digit part (context for both)."""
    import random

    import jiwer

    from apps.customer_service.pii import redact_words
    from apps.customer_service.speech.audio import load_audio
    from apps.customer_service.speech.tts import synthesize

    if recognizer is None:
        from apps.customer_service.speech.asr import create_recognizer

        recognizer = create_recognizer("pocketsphinx", lm="bank")
    rng = random.Random(seed)
    leak_free = fully = 0
    refs, hyps = [], []
    for _ in range(n):
        body = [rng.randrange(10) for _ in range(15)]
        total = sum((d * 2 - 9 if d * 2 > 9 else d * 2) if i % 2 == 0 else d for i, d in enumerate(reversed(body)))
        digits = body + [(10 - total % 10) % 10]
        spoken = " ".join(_DIGIT_NAMES[d] for d in digits)
        audio = load_audio(synthesize(f"My card number is {spoken}.", voice=voice))
        tr = recognizer.transcribe(audio.mono(), audio.sample_rate)
        result, _ = redact_words(tr.words)
        words = [DIGIT_VALUES.get(w) for w in result.text.split()]
        shown = "".join("x" if v is None else str(v) for v in words)
        number = "".join(map(str, digits))
        leak_free += not any(number[i:i + 4] in shown for i in range(len(number) - 3))
        fully += all(v is None for v in words)
        refs.append(spoken)
        hyps.append(" ".join(w.text for w in tr.words if w.text in DIGIT_VALUES))
    return {"calls": float(n), "card_leak_free": leak_free / n, "card_fully_redacted": fully / n,
            "digit_wer": float(jiwer.wer(refs, hyps))}


def evaluate_bank_lm(banking77: str | Path, *, n: int = 60, offset: int = 0, voice: str = "en-us+klatt",
                     lms: tuple[str, ...] = ("generic", "bank", "interpolated")) -> dict:
    """WER of each free-speech LM on BANKING77 rows the bank LM never saw (``lm.is_heldout``),
    spoken by espeak-ng. Flat dict: ``wer_<lm>``, ``seconds_<lm>``, ``sentences``."""
    import jiwer

    from apps.customer_service.speech.audio import load_audio
    from apps.customer_service.speech.lm import heldout_sentences, spoken_form
    from apps.customer_service.speech.sphinx import SphinxConfig, SphinxRecognizer
    from apps.customer_service.speech.tts import synthesize

    sentences = heldout_sentences(Path(banking77))[offset:offset + n]
    audio = [load_audio(synthesize(s, voice=voice)).mono() for s in sentences]
    refs = [scoring_text(spoken_form(s)) for s in sentences]
    out: dict[str, float] = {"sentences": float(len(sentences))}
    for name in lms:
        rec = SphinxRecognizer(SphinxConfig(lm=name))
        t0 = time.perf_counter()
        hyps = [scoring_text(rec.transcribe(x).text) for x in audio]
        out[f"seconds_{name}"] = time.perf_counter() - t0
        out[f"wer_{name}"] = float(jiwer.wer(refs, hyps))
    return out
