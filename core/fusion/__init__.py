"""Fusion building blocks: projection, gating, co-attention, graph and spatio-temporal attention."""

from core.fusion.alignment import CrossModalAligner
from core.fusion.attention import AttentionBlock, MultiHeadAttention, masked_softmax
from core.fusion.gate import ModalityGate
from core.fusion.graph import ModalityGraphAttention
from core.fusion.progressive import CoAttention, FusionConfig, FusionOutput, ProgressiveFusion
from core.fusion.projection import ModalityProjector
from core.fusion.spatiotemporal import SpatioTemporalAttention, SpatioTemporalConfig

__all__ = [
    "AttentionBlock",
    "CoAttention",
    "CrossModalAligner",
    "FusionConfig",
    "FusionOutput",
    "ModalityGate",
    "ModalityGraphAttention",
    "ModalityProjector",
    "MultiHeadAttention",
    "ProgressiveFusion",
    "SpatioTemporalAttention",
    "SpatioTemporalConfig",
    "masked_softmax",
]
