"""Learned audio front-end shared by the digit recogniser and the voice-emotion CNN.

Plain torch (no librosa/torchaudio), so the same code computes features on the GPU box, in
training and in the service:

* :class:`LogMel`: waveform (B, N) -> log-mel (B, M, T) with a per-utterance mean over valid
  frames removed per band (cepstral-mean style: gain and microphone/line colour cancel out).
  Optional per-sample VTLN warp (the filterbank read on a stretched frequency axis).
* :func:`augment_waves` / :func:`spec_augment` / :func:`time_stretch`: the speaker / channel
  augmentations used in training (speed, gain, noise, shift; masks; tempo).
* :class:`LogMelCNNEncoder`, registered as ``("audio", "logmel_cnn")``: conv blocks over
  (mel, time), frequency pooled, optional bidirectional GRU -> tokens (B, T', D) + mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from core.config import ConfigBase
from core.encoders import Encoder, EncoderOutput, register_encoder


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float, warp: float = 1.0) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular HTK-mel filters. ``warp`` > 1 reads the spectrum at
    ``f * warp`` (a shorter vocal tract looks like a longer one), piecewise-linear so the band
    edge stays fixed (VTLN as in Kaldi, simplified)."""
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    if warp != 1.0:
        cut = 0.85 * fmax
        lo = np.minimum(freqs * warp, cut * warp)
        # above the cut, a line from (cut, cut*warp) to (nyquist, nyquist)
        ny = sample_rate / 2
        hi = cut * warp + (freqs - cut) * (ny - cut * warp) / (ny - cut)
        freqs = np.where(freqs <= cut, lo, hi)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fb = np.zeros((n_mels, len(freqs)))
    for m in range(n_mels):
        left, centre, right = edges[m], edges[m + 1], edges[m + 2]
        up = (freqs - left) / (centre - left)
        down = (right - freqs) / (right - centre)
        fb[m] = np.clip(np.minimum(up, down), 0.0, None)
    return fb.astype(np.float32)


@dataclass
class FrontEndConfig(ConfigBase):
    sample_rate: int = 8000
    n_fft: int = 256
    hop: int = 80  # 10 ms at 8 kHz
    n_mels: int = 40
    fmin: float = 60.0
    fmax: float = 3800.0  # telephone band: wide-band audio is downsampled to 8 kHz first anyway
    warps: tuple = (0.86, 0.89, 0.92, 0.95, 0.98, 1.0, 1.02, 1.05, 1.08, 1.11, 1.14)  # VTLN grid (training)

    PRESETS = {
        "digits": {},
        "emotion": {"sample_rate": 16000, "n_fft": 512, "hop": 160, "n_mels": 64, "fmax": 7600.0},
        "tiny": {"n_mels": 16},
    }


class LogMel(nn.Module):
    """(B, N) float waveform + lengths -> (log-mel (B, M, T) mean-normalised, frame mask (B, T))."""

    def __init__(self, config: FrontEndConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or FrontEndConfig()
        banks = [mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.fmin, c.fmax, w) for w in c.warps]
        self.register_buffer("banks", torch.tensor(np.stack(banks)), persistent=False)
        self.register_buffer("window", torch.hann_window(c.n_fft), persistent=False)
        self.neutral = int(np.argmin([abs(w - 1.0) for w in c.warps]))

    def frames(self, lengths: torch.Tensor) -> torch.Tensor:
        return lengths // self.config.hop + 1

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None,
                warp_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logmel, mask = self.raw(wave, lengths, warp_index)
        return normalise(logmel, mask), mask

    def raw(self, wave: torch.Tensor, lengths: torch.Tensor | None = None,
            warp_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """log-mel before normalisation (B, M, T) and the frame mask (B, T)."""
        c = self.config
        if lengths is None:
            lengths = torch.full((wave.shape[0],), wave.shape[1], dtype=torch.long, device=wave.device)
        spec = torch.stft(wave, c.n_fft, c.hop, window=self.window, center=True, return_complex=True).abs().pow(2)
        if warp_index is None:
            mel = torch.einsum("mf,bft->bmt", self.banks[self.neutral], spec)
        else:
            mel = torch.einsum("bmf,bft->bmt", self.banks[warp_index], spec)
        logmel = torch.log(mel + 1e-8)
        n_frames = logmel.shape[-1]
        mask = torch.arange(n_frames, device=wave.device)[None, :] < self.frames(lengths).clamp(max=n_frames)[:, None]
        return logmel, mask


def normalise(logmel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-utterance band means (over valid frames) removed; padded frames set to 0."""
    m = mask[:, None, :].float()
    mean = (logmel * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp_min(1.0)
    return (logmel - mean) * m


def mel_warp_index(config: FrontEndConfig, factor: float) -> np.ndarray:
    """Fractional source band for each output band when the spectrum is scaled by ``factor`` (a
    speed/VTLN change applied to precomputed log-mels): output band centre f reads band at f / factor."""
    c = config
    centres_mel = np.linspace(_hz_to_mel(c.fmin), _hz_to_mel(c.fmax), c.n_mels + 2)[1:-1]
    src_hz = _mel_to_hz(centres_mel) / factor
    step = centres_mel[1] - centres_mel[0]
    return np.clip((_hz_to_mel(src_hz) - centres_mel[0]) / step, 0, c.n_mels - 1).astype(np.float32)


def warp_bands(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, M, T) log-mels read at fractional band positions ``index`` (B, M) by linear interpolation."""
    lo = index.floor().long().clamp(0, x.shape[1] - 1)
    hi = (lo + 1).clamp(max=x.shape[1] - 1)
    w = (index - lo.float())[:, :, None]
    def take(i):
        return x.gather(1, i[:, :, None].expand(-1, -1, x.shape[2]))
    return take(lo) * (1 - w) + take(hi) * w


# -- augmentation (training only) -------------------------------------------------------------

def speed_perturb(wave: torch.Tensor, lengths: torch.Tensor, low: float = 0.85, high: float = 1.15,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row resampled by a random factor (Kaldi-style speed perturbation: pitch and tempo
    together). Linear interpolation: the factors are close to 1, the aliasing is negligible."""
    out, new_len = [], []
    for row, n in zip(wave, lengths.tolist()):
        s = float(torch.empty(1).uniform_(low, high, generator=generator))
        m = max(8, round(n / s))
        out.append(F.interpolate(row[None, None, :n], size=m, mode="linear", align_corners=False)[0, 0])
        new_len.append(m)
    width = max(new_len)
    batch = wave.new_zeros(len(out), width)
    for i, row in enumerate(out):
        batch[i, :len(row)] = row
    return batch, torch.tensor(new_len, device=wave.device)


def augment_waves(wave: torch.Tensor, lengths: torch.Tensor, *, max_shift_s: float = 0.15, sample_rate: int = 8000,
                  snr_db: tuple[float, float] = (5.0, 40.0), gain_db: float = 12.0, p_noise: float = 0.8,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random leading silence (time shift), gain, and white/pinkish noise at a random SNR."""
    b = wave.shape[0]
    dev = wave.device
    shift = (torch.rand(b, generator=generator) * max_shift_s * sample_rate).long().to(dev)
    tail = (torch.rand(b, generator=generator) * max_shift_s * sample_rate).long().to(dev)
    new_len = lengths + shift + tail
    width = int(new_len.max())
    idx = torch.arange(width, device=dev)[None, :] - shift[:, None]
    valid = (idx >= 0) & (idx < lengths[:, None])
    out = torch.where(valid, wave.gather(1, idx.clamp(0, wave.shape[1] - 1)), wave.new_zeros(()))
    power = (out.pow(2).sum(1) / lengths.clamp_min(1)).clamp_min(1e-10)
    snr = torch.empty(b, device=dev).uniform_(*snr_db) if generator is None else \
        (torch.rand(b, generator=generator).to(dev) * (snr_db[1] - snr_db[0]) + snr_db[0])
    noise = torch.randn(b, width, device=dev)
    colour = torch.rand(b, 1, device=dev)  # 0 white .. 1 strongly low-passed (one-pole)
    lp = noise.clone()
    lp[:, 1:] = 0.5 * (noise[:, 1:] + noise[:, :-1])
    noise = (1 - colour) * noise + colour * lp * 1.4
    on = (torch.rand(b, 1, device=dev) < p_noise).float()
    noise = noise * torch.sqrt(power / 10 ** (snr / 10))[:, None] * on
    keep = torch.arange(width, device=dev)[None, :] < new_len[:, None]
    gain = 10 ** ((torch.rand(b, 1, device=dev) * 2 - 1) * gain_db / 20)
    return ((out + noise) * gain * keep), new_len


def spec_augment(x: torch.Tensor, mask: torch.Tensor, *, freq_masks: int = 2, freq_width: int = 6,
                 time_masks: int = 2, time_frac: float = 0.12) -> torch.Tensor:
    """SpecAugment (zeros, i.e. the band mean after normalisation) on (B, M, T)."""
    b, m, t = x.shape
    dev = x.device
    x = x.clone()
    ar_m = torch.arange(m, device=dev)[None, :]
    ar_t = torch.arange(t, device=dev)[None, :]
    n_valid = mask.sum(1).clamp_min(1)
    for _ in range(freq_masks):
        w = torch.randint(0, freq_width + 1, (b, 1), device=dev)
        f0 = (torch.rand(b, 1, device=dev) * (m - w).clamp_min(1)).long()
        x = x.masked_fill(((ar_m >= f0) & (ar_m < f0 + w))[:, :, None], 0.0)
    for _ in range(time_masks):
        w = (torch.rand(b, 1, device=dev) * time_frac * n_valid[:, None]).long()
        t0 = (torch.rand(b, 1, device=dev) * (n_valid[:, None] - w).clamp_min(1)).long()
        x = x.masked_fill(((ar_t >= t0) & (ar_t < t0 + w))[:, None, :], 0.0)
    return x


def time_stretch(x: torch.Tensor, mask: torch.Tensor, low: float = 0.85, high: float = 1.15) -> tuple[torch.Tensor, torch.Tensor]:
    """Tempo perturbation on the spectrogram (frames resampled; pitch untouched), per row."""
    b, m, _t = x.shape
    n = mask.sum(1).tolist()
    rows, lens = [], []
    for i in range(b):
        k = max(2, round(n[i] * float(torch.empty(1).uniform_(low, high))))
        rows.append(F.interpolate(x[i:i + 1, :, :max(2, n[i])], size=k, mode="linear", align_corners=False)[0])
        lens.append(k)
    width = max(lens)
    out = x.new_zeros(b, m, width)
    for i, r in enumerate(rows):
        out[i, :, :r.shape[-1]] = r
    new_mask = torch.arange(width, device=x.device)[None, :] < torch.tensor(lens, device=x.device)[:, None]
    return out, new_mask


# -- encoder ----------------------------------------------------------------------------------

@dataclass
class LogMelCNNConfig(ConfigBase):
    n_mels: int = 40
    channels: tuple = (24, 48, 96)  # one block (two 3x3 convs + pool) each
    time_pool: tuple = (2, 2, 1)  # time downsampling per block
    gru: int = 0  # hidden units per direction of a BiGRU over the pooled frames; 0 = none
    dropout: float = 0.1

    PRESETS = {
        "digits": {},
        "emotion": {"n_mels": 64, "channels": (32, 64, 128, 128), "time_pool": (2, 2, 2, 1), "gru": 96,
                    "dropout": 0.2},
        "tiny": {"n_mels": 16, "channels": (8, 16), "time_pool": (2, 1), "gru": 8, "dropout": 0.0},
    }


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, time_pool: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )
        self.pool = (2, time_pool)
        self.drop = nn.Dropout2d(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(F.max_pool2d(self.net(x), self.pool, ceil_mode=True))


class LogMelCNNEncoder(Encoder):
    """Normalised log-mel (B, M, T) + frame mask (B, T) -> tokens (B, T', D) + mask (B, T')."""

    modality = "audio"

    def __init__(self, config: LogMelCNNConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or LogMelCNNConfig()
        chans = (1, *c.channels)
        self.blocks = nn.ModuleList(_Block(chans[i], chans[i + 1], c.time_pool[i], c.dropout)
                                    for i in range(len(c.channels)))
        self.gru = nn.GRU(c.channels[-1], c.gru, batch_first=True, bidirectional=True) if c.gru else None
        self.dim = 2 * c.gru if c.gru else c.channels[-1]

    def forward(self, batch) -> EncoderOutput:
        x, mask = (batch["x"], batch["mask"]) if isinstance(batch, dict) else batch
        h = x.unsqueeze(1)
        for block in self.blocks:
            h = block(h)
        h = h.mean(2).transpose(1, 2)  # (B, T', C): frequency pooled
        t_out = h.shape[1]
        factor = math.prod(self.config.time_pool)
        lengths = ((mask.sum(1) + factor - 1) // factor).clamp(1, t_out)
        out_mask = torch.arange(t_out, device=h.device)[None, :] < lengths[:, None]
        if self.gru is not None:
            packed = nn.utils.rnn.pack_padded_sequence(h, lengths.cpu(), batch_first=True, enforce_sorted=False)
            h, _ = self.gru(packed)
            h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=t_out)
        return EncoderOutput(h * out_mask[..., None], out_mask)


def pool_tokens(out: EncoderOutput) -> torch.Tensor:
    """Masked mean and max over time, concatenated: (B, 2D)."""
    m = out.mask[..., None].float()
    mean = (out.tokens * m).sum(1) / m.sum(1).clamp_min(1.0)
    mx = out.tokens.masked_fill(~out.mask[..., None], -1e4).max(1).values
    return torch.cat([mean, mx], dim=-1)


def _example():
    x = torch.randn(2, 16, 40)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 30:] = False
    return {"config": LogMelCNNConfig.from_name("tiny")}, {"x": x, "mask": mask}


register_encoder("audio", "logmel_cnn", example=_example)(LogMelCNNEncoder)


@dataclass
class LogMelTDNNConfig(ConfigBase):
    n_mels: int = 40
    channels: tuple = (48, 48, 64, 64)  # residual blocks of two 1-D convolutions each
    strides: tuple = (2, 1, 2, 1)
    kernel: int = 9
    dropout: float = 0.1

    PRESETS = {
        "digits": {},
        "tiny": {"n_mels": 16, "channels": (8, 8), "strides": (2, 1), "kernel": 3, "dropout": 0.0},
    }


class _Res1d(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.a = nn.Conv1d(cin, cout, k, stride, padding=k // 2, bias=False)
        self.bn_a = nn.BatchNorm1d(cout)
        self.b = nn.Conv1d(cout, cout, k, 1, padding=k // 2, bias=False)
        self.bn_b = nn.BatchNorm1d(cout)
        self.skip = nn.Identity() if cin == cout and stride == 1 else nn.Sequential(
            nn.Conv1d(cin, cout, 1, stride, bias=False), nn.BatchNorm1d(cout))
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn_a(self.a(x)))
        return self.drop(F.relu(self.bn_b(self.b(h)) + self.skip(x)))


class LogMelTDNNEncoder(Encoder):
    """Time-delay (1-D, bands as channels) residual network over normalised log-mels (TC-ResNet
    style): about ten times cheaper than the 2-D CNN, so it trains on one CPU thread."""

    modality = "audio"

    def __init__(self, config: LogMelTDNNConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or LogMelTDNNConfig()
        self.stem = nn.Sequential(nn.Conv1d(c.n_mels, c.channels[0], 3, padding=1, bias=False),
                                  nn.BatchNorm1d(c.channels[0]), nn.ReLU())
        chans = (c.channels[0], *c.channels)
        self.blocks = nn.ModuleList(_Res1d(chans[i], chans[i + 1], c.kernel, c.strides[i], c.dropout)
                                    for i in range(len(c.channels)))
        self.dim = c.channels[-1]

    def forward(self, batch) -> EncoderOutput:
        x, mask = (batch["x"], batch["mask"]) if isinstance(batch, dict) else batch
        h = self.stem(x)
        lengths = mask.sum(1)
        for block, stride in zip(self.blocks, self.config.strides, strict=True):
            h = block(h)
            lengths = (lengths + stride - 1) // stride
        t_out = h.shape[-1]
        out_mask = torch.arange(t_out, device=h.device)[None, :] < lengths.clamp(1, t_out)[:, None]
        return EncoderOutput(h.transpose(1, 2) * out_mask[..., None], out_mask)


def _tdnn_example():
    x = torch.randn(2, 16, 40)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 25:] = False
    return {"config": LogMelTDNNConfig.from_name("tiny")}, {"x": x, "mask": mask}


register_encoder("audio", "logmel_tdnn", example=_tdnn_example)(LogMelTDNNEncoder)
