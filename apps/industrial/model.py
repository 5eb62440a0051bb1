"""Model assembly: the vibration classifier and the image+vibration fusion model.

The fusion puts detector feature tokens (image regions) and vibration time tokens in one
(time x position) grid for the core's SpatioTemporalAttention: row 0 holds the image's P region
tokens, rows 1..T hold the vibration's T time tokens (pooled to P-wide rows). Spatial attention
mixes within a row, temporal attention mixes across rows at one position, so image regions and
vibration time steps exchange information in every layer. The core's ModalityGate then weights
the image summary and the vibration summary per event; a missing modality is masked out of the
grid and gets zero gate weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from apps.industrial.data import FAULT_CLASSES
from apps.industrial.encoders import (
    DetectorTokenEncoder,
    DetectorTokenEncoderConfig,
    VibrationEncoder,
    VibrationEncoderConfig,
)
from core.config import ConfigBase
from core.encoders import masked_mean
from core.fusion import ModalityGate, SpatioTemporalAttention, SpatioTemporalConfig
from core.heads import ClassificationHead


class VibrationClassifier(nn.Module):
    """Windows (B, L) -> machine-state logits (B, 4) and the encoder's time tokens."""

    def __init__(self, config: VibrationEncoderConfig, num_classes: int = len(FAULT_CLASSES)):
        super().__init__()
        self.config = config
        self.encoder = VibrationEncoder(**config.to_dict())
        self.head = ClassificationHead(config.dim, num_classes, dropout=config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.encoder(x)
        return self.head(out.pooled())


@dataclass
class FusionModelConfig(ConfigBase):
    image: DetectorTokenEncoderConfig = field(default_factory=DetectorTokenEncoderConfig)
    vibration_dim: int = 64  # width of the (frozen) vibration encoder's time tokens
    attention: SpatioTemporalConfig = field(
        default_factory=lambda: SpatioTemporalConfig(dim=32, heads=4, layers=1, max_time=8, max_positions=16, dropout=0.1)
    )
    vibration_steps: int = 4  # vibration tokens are pooled to this many time rows of `max_positions`
    evidence_dim: int = 6  # per-event scalars: image (logit max conf, log1p #defects), vibration (4 state probs)

    PRESETS: ClassVar[dict] = {
        "tiny": {
            "image": {"in_dim": 8, "dim": 16, "dropout": 0.0},
            "vibration_dim": 16,
            "attention": {"dim": 16, "heads": 2, "layers": 1, "max_time": 8, "max_positions": 4, "dropout": 0.0},
            "vibration_steps": 2,
        },
        "small": {},
    }


class FusionModel(nn.Module):
    """Board-level defect logit from detector feature tokens, vibration time tokens, or both.

    Inputs are the frozen upstream models' outputs: ``image_tokens`` (B, P, C) pooled detector neck
    features, ``vibration_tokens`` (B, T, Dv) from the vibration encoder, ``evidence`` (B, 6) their
    scalar outputs (detector max-confidence logit and defect count; vibration state probabilities),
    ``present`` (B, 2) bool for (image, vibration). Returns (logit (B,), gate weights (B, 2)).
    """

    def __init__(self, config: FusionModelConfig):
        super().__init__()
        self.config = config
        d = config.attention.dim
        self.image_encoder = DetectorTokenEncoder(**config.image.to_dict())
        self.image_proj = nn.Linear(config.image.dim, d)
        self.vibration_proj = nn.Sequential(nn.LayerNorm(config.vibration_dim), nn.Linear(config.vibration_dim, d))
        self.attention = SpatioTemporalAttention(config.attention)
        # Gate reliability features: each modality's own scalar evidence (zero-padded to 4).
        self.gate = ModalityGate(d, 2, reliability_dim=4)
        # The scalar evidence enters linearly (a calibrated logistic combination, as in the Bayesian
        # rule); the attention-fused tokens add a correction that starts at zero. An MLP over the
        # evidence learnt sharp thresholds that held on the training board group only.
        self.evidence_head = nn.Linear(config.evidence_dim, 1)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(
        self,
        image_tokens: torch.Tensor,
        vibration_tokens: torch.Tensor,
        evidence: torch.Tensor,
        present: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = present.shape[0]
        p, d, steps = self.config.attention.max_positions, self.config.attention.dim, self.config.vibration_steps
        present = present.bool()
        image = self.image_proj(self.image_encoder(image_tokens).tokens)  # (B, P', d)
        if image.shape[1] != p:
            image = F.adaptive_avg_pool1d(image.transpose(1, 2), p).transpose(1, 2)  # (B, P, d)
        vib = self.vibration_proj(vibration_tokens)  # (B, T, d)
        vib = F.adaptive_avg_pool1d(vib.transpose(1, 2), steps * p).transpose(1, 2).reshape(batch, steps, p, d)
        grid = torch.cat([image[:, None], vib], dim=1)  # (B, 1 + steps, P, d): row 0 image, rows 1.. time
        mask = torch.cat([present[:, :1, None].expand(batch, 1, p), present[:, 1:, None].expand(batch, steps, p)], dim=1)
        out, _ = self.attention(grid, mask)
        image_summary = masked_mean(out[:, 0], mask[:, 0])
        vib_summary = masked_mean(out[:, 1:].reshape(batch, steps * p, d), mask[:, 1:].reshape(batch, steps * p))
        evidence = evidence * torch.cat([present[:, :1].expand(-1, 2), present[:, 1:].expand(-1, 4)], dim=1).to(evidence.dtype)
        reliability = torch.stack([F.pad(evidence[:, :2], (0, 2)), evidence[:, 2:]], dim=1)  # (B, 2, 4)
        fused, weights = self.gate(torch.stack([image_summary, vib_summary], dim=1), present, reliability)
        return (self.evidence_head(evidence) + self.head(fused)).squeeze(-1), weights


def load_fusion_model(bundle_dir) -> tuple[FusionModel, object]:
    from core.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    model = FusionModel(FusionModelConfig.from_dict(bundle.config["fusion"]))
    model.load_state_dict(bundle.state_dict)
    return model.eval(), bundle


def load_vibration_classifier(bundle_dir) -> tuple[VibrationClassifier, object]:
    """(classifier in eval mode, core Bundle) from a sha256-verified bundle."""
    from core.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    model = VibrationClassifier(VibrationEncoderConfig.from_dict(bundle.config["encoder"]), len(bundle.config["classes"]))
    model.load_state_dict(bundle.state_dict)
    return model.eval(), bundle
