"""Whisper and HF-CTC backends: loading and decoding plumbing on tiny random models saved locally.

The Whisper plumbing tests decode a tone, which the voice activity detector rightly calls no speech, so they
turn it off (``vad=False``); two tests check the gate itself."""

from __future__ import annotations

import json

import numpy as np
import pytest

from apps.customer_service.speech.asr import Recognizer, Transcript, create_recognizer


def _tone(seconds: float = 1.0, rate: int = 16_000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    import torch
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(0)
    # n_vocab 51864 = the English-only GPT-2 tokenizer shipped inside openai-whisper
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=16, n_audio_head=2, n_audio_layer=1,
                           n_vocab=51864, n_text_ctx=448, n_text_state=16, n_text_head=2, n_text_layer=1)
    model = Whisper(dims)
    path = tmp_path_factory.mktemp("whisper") / "tiny-random.pt"
    torch.save({"dims": dims.__dict__, "model_state_dict": model.state_dict()}, path)
    return path


def test_whisper_loads_local_checkpoint_and_decodes(tiny_whisper):
    rec = create_recognizer("whisper", model_path=tiny_whisper, max_tokens=6, vad=False)
    assert isinstance(rec, Recognizer)
    out = rec.transcribe(_tone(1.0), 16_000)
    assert isinstance(out, Transcript) and out.backend == "whisper"
    for w in out.words:  # a random model says random things, but every word is well formed
        assert 0.0 <= w.start <= w.end <= 30.0 and 0.0 <= w.confidence <= 1.0
    assert 0.0 <= out.confidence <= 1.0


def test_whisper_decodes_from_several_threads_as_from_one(tiny_whisper):
    """An analysed call and live finals may decode at once; openai-whisper's decoding hooks its model."""
    from concurrent.futures import ThreadPoolExecutor

    rec = create_recognizer("whisper", model_path=tiny_whisper, max_tokens=6, vad=False)
    clips = [_tone(1.0 + 0.25 * k) for k in range(4)]
    alone = [[(w.text, w.start, w.end) for w in rec.transcribe(c, 16_000).words] for c in clips]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda c: [(w.text, w.start, w.end) for w in rec.transcribe(c, 16_000).words], clips))
    assert together == alone


def test_whisper_decodes_nothing_the_voice_activity_detector_calls_no_speech(tiny_whisper, monkeypatch):
    import whisper

    calls = []
    monkeypatch.setattr(whisper, "transcribe", lambda *a, **k: calls.append(a) or {"segments": []})
    rec = create_recognizer("whisper", model_path=tiny_whisper)
    out = rec.transcribe(_tone(3.0), 16_000)
    assert calls == [] and out.words == [] and out.extra == {"no_speech": True, "vad": "silero-vad"}
    # a prompted number is decoded whole: the detector misses some short, tightly cut digits
    for mode in ("digit", "digits", "amount"):
        rec.transcribe(_tone(0.3), 16_000, mode=mode)
    assert len(calls) == 3 and all(len(audio) == 4_800 for _, audio in calls)


def test_whisper_decodes_the_speech_spans_joined_and_times_words_in_the_recording(tiny_whisper, monkeypatch):
    import whisper

    from apps.customer_service.speech import vad, whisper_backend

    spans = [(16_000, 40_000), (64_000, 80_000)]  # 1.0-2.5 s and 4.0-5.0 s of a 6 s recording
    monkeypatch.setattr(whisper_backend, "speech_of", lambda x, use_vad: vad.SpeechOnly.of(x, spans))
    heard = []
    words = [{"word": " cancel", "start": 0.2, "end": 0.9, "probability": 0.9},
             {"word": " my", "start": 1.2, "end": 1.5, "probability": 0.8},  # ends on the join (1.5 s)
             {"word": " card", "start": 1.6, "end": 2.4, "probability": 0.7}]
    monkeypatch.setattr(whisper, "transcribe", lambda model, audio, **k: heard.append(len(audio)) or
                        {"segments": [{"words": words}], "language": "en"})
    out = create_recognizer("whisper", model_path=tiny_whisper).transcribe(_tone(6.0), 16_000)
    assert heard == [40_000]
    assert [(w.text, w.start, w.end) for w in out.words] == [
        ("cancel", pytest.approx(1.2), pytest.approx(1.9)), ("my", pytest.approx(2.2), pytest.approx(2.5)),
        ("card", pytest.approx(4.1), pytest.approx(4.9))]


def test_whisper_refuses_names_and_non_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        create_recognizer("whisper", model_path="tiny.en")
    with pytest.raises(FileNotFoundError, match="CTranslate2 Whisper folder"):
        create_recognizer("whisper", model_path=tmp_path)  # a folder, but no model.bin
    bad = tmp_path / "bad.pt"
    import torch

    torch.save({"weights": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not an openai-whisper checkpoint"):
        create_recognizer("whisper", model_path=bad)


@pytest.fixture(scope="module")
def tiny_ctc(tmp_path_factory):
    from core.offline import enforce_offline

    enforce_offline()
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    root = tmp_path_factory.mktemp("ctc")
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, **{c: i + 3 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz'")}}
    (root / "vocab.json").write_text(json.dumps(vocab))
    tok = Wav2Vec2CTCTokenizer(str(root / "vocab.json"), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|")
    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=True,
                                  return_attention_mask=False)
    torch.manual_seed(0)
    cfg = Wav2Vec2Config(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8),
                         num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, pad_token_id=0,
                         do_stable_layer_norm=False, feat_extract_norm="group")
    model = Wav2Vec2ForCTC(cfg)
    with torch.no_grad():  # bias the head so the random model emits letters and delimiters, not only blanks
        model.lm_head.bias[0] = -5.0
    model.save_pretrained(root)
    Wav2Vec2Processor(feature_extractor=fe, tokenizer=tok).save_pretrained(root)
    return root


def test_ctc_loads_local_folder_and_decodes_words_with_times(tiny_ctc):
    rec = create_recognizer("ctc", model_path=tiny_ctc)
    audio = _tone(1.0) + 0.05 * np.random.default_rng(0).standard_normal(16_000).astype(np.float32)
    out = rec.transcribe(audio, 16_000)
    assert out.backend == "ctc" and out.words, "the biased random head must emit some letters"
    assert rec.stride_s == pytest.approx(20 / 16_000)
    prev_end = 0.0
    for w in out.words:
        assert w.text and "|" not in w.text and "<pad>" not in w.text
        assert prev_end <= w.start < w.end <= 1.0 + 1e-6
        assert 0.0 < w.confidence <= 1.0
        prev_end = w.end


def test_ctc_backend_is_not_asked_to_decode_silence(tiny_ctc):
    out = create_recognizer("ctc", model_path=tiny_ctc).transcribe(np.zeros(8_000, np.float32), 8_000)
    assert out.words == [] and out.confidence == 0.0 and out.extra == {"silent": True} and out.backend == "ctc"
    assert out.duration_s == pytest.approx(1.0)


def test_ctc_greedy_decoding_collapses_repeats_and_splits_words(tiny_ctc):
    rec = create_recognizer("ctc", model_path=tiny_ctc)
    tok = rec.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in ["<pad>", "h", "h", "<pad>", "i", "|", "|", "y", "o", "<pad>", "o", "u"]]
    words = rec._words(ids, [0.5] * len(ids))
    assert [w.text for w in words] == ["hi", "yoou"]
    assert words[0].start == pytest.approx(1 * rec.stride_s) and words[0].end == pytest.approx(5 * rec.stride_s)


def test_ctc_refuses_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        create_recognizer("ctc", model_path=tmp_path / "nope")


def test_unknown_backend_and_missing_path():
    with pytest.raises(ValueError, match="unknown ASR backend"):
        create_recognizer("kaldi")
    with pytest.raises(ValueError, match="model_path"):
        create_recognizer("ctc")  # whisper without a path is the installed Whisper base (test_whisper_encoder)


def test_eval_makes_the_recogniser_of_each_backend_it_is_asked_for(tmp_path, tiny_whisper, monkeypatch):
    """One process evaluating pocketsphinx then Whisper must score each with its own, fresh recogniser."""
    import soundfile as sf

    from apps.customer_service.speech import asr
    from apps.customer_service.speech import evaluate as E

    made = []
    real = asr.create_recognizer
    monkeypatch.setattr(asr, "create_recognizer",
                        lambda backend, **kw: (made.append((backend, kw.get("vad"))), real(backend, **kw))[1])
    chapter = tmp_path / "test-clean" / "1" / "2"
    chapter.mkdir(parents=True)
    sf.write(chapter / "1-2-0000.flac", _tone(1.0), 16_000)
    (chapter / "1-2.trans.txt").write_text("1-2-0000 HELLO\n")
    assert "vad" not in E.evaluate_asr(tmp_path)
    with_vad = E.evaluate_asr(tmp_path, backend="whisper", model_path=tiny_whisper)
    without = E.evaluate_asr(tmp_path, backend="whisper", model_path=tiny_whisper, vad=False)
    E.evaluate_asr(tmp_path)
    # pocketsphinx takes no vad option; Whisper is evaluated with the detector, as served, unless told otherwise
    assert made == [("pocketsphinx", None), ("whisper", True), ("whisper", False), ("pocketsphinx", None)]
    assert with_vad["vad"] == 1.0 and without["vad"] == 0.0
