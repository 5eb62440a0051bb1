"""Encoder contract, registry and the generic encoders (importing registers them)."""

from core.encoders.base import Encoder, EncoderOutput, masked_mean
from core.encoders.generic import ConvLSTMEncoder, ConvLSTMEncoderConfig, MLPEncoder, MLPEncoderConfig
from core.encoders.registry import create_encoder, get_entry, list_encoders, register_encoder

__all__ = [
    "ConvLSTMEncoder",
    "ConvLSTMEncoderConfig",
    "Encoder",
    "EncoderOutput",
    "MLPEncoder",
    "MLPEncoderConfig",
    "create_encoder",
    "get_entry",
    "list_encoders",
    "masked_mean",
    "register_encoder",
]
