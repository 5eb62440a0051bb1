"""HF sequence-to-sequence backend: loading and decoding plumbing on tiny random models saved locally
(a Wav2Vec2 encoder + BERT decoder SpeechEncoderDecoderModel, and a Whisper with a tokenizer written here).

The plumbing tests decode a noisy tone, which the voice activity detector rightly calls no speech, so they
turn it off (``vad=False``); the tests at the end check the gate itself."""

from __future__ import annotations

import json

import numpy as np
import pytest

from apps.customer_service.speech.asr import Recognizer, Transcript, Word, create_recognizer
from apps.customer_service.speech.seq2seq import Seq2SeqRecognizer, chunk_bounds

WORDS = ["please", "cancel", "my", "card", "can", "twelve", "pounds", "fifty"]


def _noisy_tone(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * 16_000)) / 16_000
    noise = 0.05 * np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * np.sin(2 * np.pi * 220 * t) + noise).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_encoder_decoder(tmp_path_factory):
    """Wav2Vec2 encoder + BERT decoder, BertTokenizer from a vocab written here; the decoder's end-of-text
    token biased away, so it talks until the per-second bound stops it."""
    from core.offline import enforce_offline

    enforce_offline()
    import torch
    from transformers import (
        BertConfig,
        BertTokenizer,
        SpeechEncoderDecoderConfig,
        SpeechEncoderDecoderModel,
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
    )

    root = tmp_path_factory.mktemp("seq2seq") / "tiny-bert2wav2vec2"
    root.mkdir()
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##cel", *letters, *(f"##{c}" for c in letters)]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(root / "vocab.txt"))
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=True,
                                         return_attention_mask=True)
    torch.manual_seed(0)
    encoder = Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=8,
                             num_conv_pos_embedding_groups=2, do_stable_layer_norm=False, feat_extract_norm="group")
    decoder = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64, is_decoder=True, add_cross_attention=True)
    config = SpeechEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = tokenizer.cls_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.sep_token_id
    model = SpeechEncoderDecoderModel(config=config)
    model.generation_config.update(decoder_start_token_id=tokenizer.cls_token_id, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.sep_token_id)
    with torch.no_grad():
        model.decoder.cls.predictions.bias[tokenizer.all_special_ids] = -5.0
    model.save_pretrained(root)
    extractor.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def tiny_hf_whisper(tmp_path_factory):
    """WhisperForConditionalGeneration + WhisperProcessor whose byte-level BPE tokenizer (letters, the space
    "Ġ" and Whisper's special tokens; no merges) is written here."""
    from core.offline import enforce_offline

    enforce_offline()
    import torch
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    root = tmp_path_factory.mktemp("seq2seq") / "tiny-whisper"
    root.mkdir()
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|translate|>",
                "<|notimestamps|>"]
    vocab = {c: i for i, c in enumerate([*"abcdefghijklmnopqrstuvwxyz", "Ġ", *specials])}
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = WhisperTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), unk_token=specials[0],
                                 bos_token=specials[0], eos_token=specials[0], pad_token=specials[0],
                                 additional_special_tokens=specials[1:])
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer).save_pretrained(root)
    ids = dict(zip(specials, tokenizer.convert_tokens_to_ids(specials)))
    torch.manual_seed(0)
    config = WhisperConfig(vocab_size=len(vocab), num_mel_bins=80, d_model=16, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                           max_source_positions=1500, max_target_positions=64,
                           decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=ids["<|endoftext|>"],
                           pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"])
    model = WhisperForConditionalGeneration(config)
    # the special tokens (the end of text among them) suppressed: every chunk writes letters until its bound
    model.generation_config.update(no_timestamps_token_id=ids["<|notimestamps|>"], suppress_tokens=list(ids.values()))
    model.save_pretrained(root)
    return root


def _well_formed(out: Transcript, seconds: float) -> None:
    assert isinstance(out, Transcript) and out.backend == "seq2seq" and out.words
    assert out.duration_s == pytest.approx(seconds) and out.extra["word_times"] == "approximate"
    prev_end = 0.0
    for w in out.words:  # a random model says random things, but every word is well formed
        assert isinstance(w, Word) and w.text == w.text.strip() and w.text
        assert "[CLS]" not in w.text and "<|" not in w.text
        assert prev_end - 1e-6 <= w.start < w.end <= seconds + 1e-6
        assert 0.0 < w.confidence <= 1.0
        prev_end = w.end
    assert out.confidence == pytest.approx(np.mean([w.confidence for w in out.words]))


def _count_generated(rec: Seq2SeqRecognizer) -> list[int]:
    """The number of tokens each ``generate`` call of ``rec``'s model makes, appended as they happen."""
    generated: list[int] = []
    real = rec.model.generate

    def generate(inputs, **kw):
        out = real(inputs, **kw)
        generated.append(len(out.scores))
        return out

    rec.model.generate = generate
    return generated


@pytest.mark.parametrize("folder", ["tiny_encoder_decoder", "tiny_hf_whisper"])
def test_loads_a_local_folder_and_transcribes_a_second_and_more_than_thirty(folder, request):
    path = request.getfixturevalue(folder)
    rec = create_recognizer("seq2seq", model_path=path, vad=False)
    assert isinstance(rec, Recognizer) and isinstance(rec, Seq2SeqRecognizer) and rec.version == f"seq2seq-{path.name}"
    generated = _count_generated(rec)
    _well_formed(rec.transcribe(_noisy_tone(1.0), 16_000), 1.0)
    # a model that never ends its text stops at the per-second bound, not at the decoder's 64 positions
    assert generated == [rec.new_tokens_for(1.0)] and rec.new_tokens_for(1.0) < 60
    generated.clear()
    long = rec.transcribe(_noisy_tone(35.0), 16_000)
    _well_formed(long, 35.0)
    assert len(generated) == 2  # two chunks: the model's 30 s window, then the rest
    assert long.words[0].start < 30.0 < long.words[-1].end  # the second chunk's words are timed after the first's


@pytest.mark.parametrize("folder", ["tiny_encoder_decoder", "tiny_hf_whisper"])
def test_the_token_bound_is_set_once_and_draws_no_warning(folder, request, caplog):
    """Whisper's generate() fills max_length in when it is unset: given max_new_tokens too, transformers logged
    "Both `max_new_tokens` ... and `max_length` ... seem to have been set" once per chunk."""
    import logging
    import warnings

    rec = create_recognizer("seq2seq", model_path=request.getfixturevalue(folder), vad=False)
    generated = _count_generated(rec)
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec.transcribe(_noisy_tone(1.0), 16_000)
        rec.transcribe(_noisy_tone(2.5, seed=1), 16_000)
    said = [r.getMessage() for r in caplog.records] + [str(w.message) for w in caught]
    assert not [m for m in said if "max_length" in m or "max_new_tokens" in m], said
    assert generated == [rec.new_tokens_for(1.0), rec.new_tokens_for(2.5)]  # the bound still holds, exactly


def test_audio_at_another_rate_is_resampled_first(tiny_encoder_decoder):
    out = create_recognizer("seq2seq", model_path=tiny_encoder_decoder, vad=False).transcribe(
        _noisy_tone(1.0)[::2], 8_000)
    _well_formed(out, 1.0)


def test_silence_is_not_decoded(tiny_encoder_decoder):
    out = create_recognizer("seq2seq", model_path=tiny_encoder_decoder).transcribe(np.zeros(8_000, np.float32), 8_000)
    assert out.words == [] and out.extra == {"silent": True} and out.backend == "seq2seq"


def test_a_silent_chunk_of_a_long_input_is_not_decoded(tiny_encoder_decoder):
    """A long call's stretch of digital silence (a muted line; the agent's channel while the caller talks) got
    words: Whisper base writes " you" in 3 s of zeros. Here 1.5 s of signal then 4.5 s of zeros, in 2 s chunks:
    only the first chunk (cut in the silence just after the signal) is decoded."""
    rec = Seq2SeqRecognizer(tiny_encoder_decoder, chunk_s=2.0, vad=False)
    decoded = []
    real = rec._generate
    rec._generate = lambda chunk: decoded.append(len(chunk)) or real(chunk)
    out = rec.transcribe(np.concatenate([_noisy_tone(1.5), np.zeros(int(4.5 * 16_000), np.float32)]), 16_000)
    assert len(decoded) == 1 and decoded[0] < 2 * 16_000
    _well_formed(out, 6.0)
    assert out.words[-1].end <= 1.5 + 1e-6  # every word over the signal


def test_subword_tokens_make_one_word_with_their_mean_probability(tiny_encoder_decoder):
    rec = create_recognizer("seq2seq", model_path=tiny_encoder_decoder)
    tok = rec.tokenizer
    ids = tok.convert_tokens_to_ids(["[CLS]", "please", "can", "##cel", "my", "card", "[SEP]"])
    probs = [0.99, 0.9, 0.6, 0.4, 0.8, 0.7, 0.99]
    words = rec._words(ids, probs, 1.0, 3.0)
    assert [w.text for w in words] == ["please", "cancel", "my", "card"]
    assert [w.confidence for w in words] == pytest.approx([0.9, 0.5, 0.8, 0.7])
    # laid out over the voiced stretch in proportion to their letters (and a space each)
    assert words[0].start == pytest.approx(1.0) and words[-1].end == pytest.approx(3.0)
    assert words[1].end - words[1].start == pytest.approx(2.0 * 7 / 22)
    assert rec._words(tok.convert_tokens_to_ids(["[CLS]", "[SEP]"]), [0.9, 0.9], 0.0, 1.0) == []


def test_long_audio_is_cut_in_its_quietest_moment_near_the_window_end():
    x = _noisy_tone(70.0)
    x[int(29.0 * 16_000):int(29.1 * 16_000)] = 0.0  # a pause a second before the 30 s window ends
    bounds = chunk_bounds(x, 30 * 16_000, 2 * 16_000)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(x) and len(bounds) == 3
    assert all(b - a <= 30 * 16_000 for a, b in bounds)
    assert all(prev[1] == nxt[0] for prev, nxt in zip(bounds, bounds[1:]))  # nothing lost, nothing twice
    assert 29.0 <= bounds[0][1] / 16_000 <= 29.1
    assert chunk_bounds(x[:16_000], 30 * 16_000, 2 * 16_000) == [(0, 16_000)]


def test_refuses_what_is_not_a_local_seq2seq_model(tmp_path):
    from transformers import BertConfig, Wav2Vec2Config

    with pytest.raises(FileNotFoundError, match="never downloaded"):
        create_recognizer("seq2seq", model_path=tmp_path / "openai/whisper-tiny")
    with pytest.raises(ValueError, match="model_path"):
        create_recognizer("seq2seq")
    Wav2Vec2Config().save_pretrained(tmp_path / "ctc")
    with pytest.raises(ValueError, match="not a speech sequence-to-sequence one.*use the ctc backend"):
        create_recognizer("seq2seq", model_path=tmp_path / "ctc")
    BertConfig().save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="'bert' model, not a speech sequence-to-sequence one"):
        create_recognizer("seq2seq", model_path=tmp_path / "bert")


def test_the_service_can_be_set_to_transcribe_with_it(tiny_encoder_decoder, cs_settings):
    from apps.customer_service.service import CallRequest, CustomerServiceEngine, recognizer_for
    from apps.customer_service.settings import CustomerServiceSettings
    from tests.apps.customer_service.conftest import wav_bytes

    settings = cs_settings.model_copy(update={"asr_backend": "seq2seq", "asr_model_path": tiny_encoder_decoder,
                                             "asr_vad": False})
    rec = recognizer_for(settings)
    assert isinstance(rec, Seq2SeqRecognizer)
    engine = CustomerServiceEngine(settings, recognizer=rec)
    out = engine.analyze(CallRequest(audio=wav_bytes(_noisy_tone(2.0))))
    assert out["model_versions"]["asr"] == "seq2seq-tiny-bert2wav2vec2"
    assert out["transcript"]["text"] and out["segments"][0]["asr_confidence"] > 0
    assert CustomerServiceSettings(asr_backend="seq2seq").asr_backend == "seq2seq"  # the environment may name it


def test_what_the_voice_activity_detector_calls_no_speech_is_not_decoded(tiny_encoder_decoder):
    """Whisper base wrote "I'm going to go to the next room." three times into 29 s of -50 dBFS noise."""
    rec = create_recognizer("seq2seq", model_path=tiny_encoder_decoder)
    generated = _count_generated(rec)
    out = rec.transcribe(_noisy_tone(3.0), 16_000)
    assert generated == [] and out.words == [] and out.extra == {"no_speech": True, "vad": "silero-vad"}


def test_only_the_speech_spans_are_decoded_and_words_are_timed_in_the_recording(tiny_encoder_decoder, monkeypatch):
    from apps.customer_service.speech import seq2seq, vad

    spans = [(16_000, 40_000), (64_000, 80_000)]  # 1.0-2.5 s and 4.0-5.0 s of a 6 s recording
    monkeypatch.setattr(seq2seq, "speech_of", lambda x, use_vad: vad.SpeechOnly.of(x, spans))
    rec = create_recognizer("seq2seq", model_path=tiny_encoder_decoder)
    decoded = []
    real = rec._generate
    rec._generate = lambda chunk: decoded.append(len(chunk)) or real(chunk)
    out = rec.transcribe(_noisy_tone(6.0), 16_000)
    assert decoded == [40_000]  # the two spans joined, one chunk
    _well_formed(out, 6.0)
    assert all(any(a / 16_000 - 1e-6 <= t <= b / 16_000 + 1e-6 for a, b in spans)
               for w in out.words for t in (w.start, w.end))
    assert out.words[0].start >= 1.0 and out.words[-1].end > 4.0
