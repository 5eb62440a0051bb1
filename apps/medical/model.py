"""The radiology model: CT encoder + report encoder -> core progressive fusion (co-attention, gate)
-> one malignancy logit, calibrated by temperature/bias scaling fitted on validation studies.

Either modality may be missing (``present`` masks, or ``None`` for the whole batch); training drops
modalities at random so the gate learns to lean on whichever one is there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from apps.medical.detector import DETECTOR_FEATURES, NoduleDetector, NoduleDetectorConfig
from apps.medical.encoders import (
    BertReportEncoder,
    CandidateEncoderConfig,
    CTCandidateEncoder,
    CTEncoderConfig,
    CTResNetEncoder,
    posterise,
)
from core.config import ConfigBase
from core.fusion.progressive import FusionConfig
from core.heads import ClassificationHead
from core.model import MultimodalModel

MODALITIES = ("ct", "report")


# smoke-test sized candidate model (tests, CLI smoke runs)
_TINY_CANDIDATES = {
    "ct_kind": "candidates",
    "candidate_encoder": CandidateEncoderConfig.PRESETS["tiny"],
    "candidate_stage": {"k": 3, "crop": 12},
    "risk_factors": True,
    "fusion": FusionConfig.PRESETS["tiny"],
    "clause_tokens": 16,
    "max_clauses": 8,
    "head_hidden": 8,
    "bert_hidden": 16,
}

# the dense detector's top 8 (crops + its heat / size / malignancy outputs) + risk factors
_DETECTOR_RISK = {"ct_kind": "detector", "aux_weight": 0.5, "candidate_stage": {"crop": 20}, "risk_factors": True,
                  "candidate_encoder": {"geometry_features": len(DETECTOR_FEATURES)}}


@dataclass
class MedicalModelConfig(ConfigBase):
    ct: CTEncoderConfig = field(default_factory=CTEncoderConfig)
    # "resnet3d": one lung-cropped, resized volume; "candidates": the classical candidate stage
    # (apps.medical.candidates, native resolution) -> crops + geometry -> CTCandidateEncoder;
    # "detector": the dense nodule detector's peaks (apps.medical.detector) -> the same encoder
    ct_kind: str = "resnet3d"
    detector: NoduleDetectorConfig = field(default_factory=NoduleDetectorConfig)
    candidate_encoder: CandidateEncoderConfig = field(default_factory=CandidateEncoderConfig)
    candidate_stage: dict = field(default_factory=dict)  # CandidateConfig overrides (defaults if empty)
    risk_factors: bool = False  # the report also gives its clinical risk factors (apps.medical.risk) as a token
    ranker_members: int = 5  # MLPs averaged by the candidate ranker
    ranker_dropout: float = 0.3
    fusion: FusionConfig = field(default_factory=lambda: FusionConfig.from_name("small"))
    volume_shape: list[int] = field(default_factory=lambda: [56, 88, 88])  # (D, H, W) model input
    # CT intensities are posterised to this many levels (0 = off) inside forward(), in training and
    # serving alike: 16 levels (~90 HU steps in the lung window) keep lung, ground glass, solid tissue
    # and calcium apart, drop scanner-noise texture, and let a training set travel compactly.
    intensity_levels: int = 16
    aux_weight: float = 0.0  # training only: per-modality heads on the fused summaries get this loss share
    # the per-modality heads' logits are also added to the joint head's (log-odds of independent evidence
    # add up): the gate's convex weighting alone let a strong CT drown a weaker but independent report
    evidence_sum: bool = False
    clause_tokens: int = 48  # word pieces kept per report clause
    max_clauses: int = 24  # report clauses kept (one token each)
    head_hidden: int = 64
    bert_hidden: int = 384  # hidden size of the report BERT (MiniLM: 384, BioBERT: 768)

    PRESETS = {
        "tiny": {
            "ct": CTEncoderConfig.PRESETS["tiny"],
            "fusion": FusionConfig.PRESETS["tiny"],
            "volume_shape": [16, 24, 24],
            "clause_tokens": 16,
            "max_clauses": 8,
            "head_hidden": 8,
            "bert_hidden": 16,
        },
        "small": {},
        # nodule candidates at native resolution (crops + geometry) + per-modality auxiliary losses
        "candidates": {"ct_kind": "candidates", "aux_weight": 0.5, "candidate_stage": {"crop": 20}},
        "candidates_risk": {"ct_kind": "candidates", "aux_weight": 0.5, "candidate_stage": {"crop": 20}, "risk_factors": True},
        "candidates_aux": {"ct_kind": "candidates", "aux_weight": 1.0, "candidate_encoder": {"dropout": 0.3},
                           "candidate_stage": {"crop": 20}},
        "tiny_candidates": _TINY_CANDIDATES,
        "detector_risk": _DETECTOR_RISK,
        "detector_evidence": {**_DETECTOR_RISK, "evidence_sum": True},
        "tiny_detector": {**_TINY_CANDIDATES, "ct_kind": "detector", "detector": NoduleDetectorConfig.PRESETS["tiny"],
                          "aux_weight": 0.5, "evidence_sum": True,  # as the shipped detector_evidence
                          "candidate_encoder": {**CandidateEncoderConfig.PRESETS["tiny"],
                                                "geometry_features": len(DETECTOR_FEATURES)}},
        # small + fixed blob features in the CT encoder + per-modality auxiliary losses
        "small_blob": {"ct": {**CTEncoderConfig.PRESETS["small"], "blob_features": True}, "aux_weight": 0.5},
    }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MedicalModelConfig:
        data = dict(data)
        if isinstance(data.get("ct"), dict):
            data["ct"] = CTEncoderConfig.from_dict(data["ct"])
        if isinstance(data.get("candidate_encoder"), dict):
            data["candidate_encoder"] = CandidateEncoderConfig.from_dict(data["candidate_encoder"])
        if isinstance(data.get("fusion"), dict):
            data["fusion"] = FusionConfig.from_dict(data["fusion"])
        if isinstance(data.get("detector"), dict):
            data["detector"] = NoduleDetectorConfig.from_dict(data["detector"])
        return super().from_dict(data)


class MedicalModel(nn.Module):
    def __init__(self, config: MedicalModelConfig, report_encoder: BertReportEncoder):
        super().__init__()
        if report_encoder.dim != config.bert_hidden:
            raise ValueError(f"report encoder width {report_encoder.dim} != config.bert_hidden {config.bert_hidden}")
        self.config = config
        heads = {"malignancy": ClassificationHead(config.fusion.dim, 1, hidden=config.head_hidden)}
        if config.ct_kind == "candidates":
            ct_encoder: nn.Module = CTCandidateEncoder(config.candidate_encoder)
            self.ranker = CandidateRanker(config.candidate_encoder.geometry_features - 1, members=config.ranker_members,
                                          dropout=config.ranker_dropout)
        elif config.ct_kind == "detector":
            ct_encoder = CTCandidateEncoder(config.candidate_encoder)
            self.detector = NoduleDetector(config.detector)
        elif config.ct_kind == "resnet3d":
            ct_encoder = CTResNetEncoder(config.ct)
        else:
            raise ValueError(f"unknown ct_kind {config.ct_kind!r}; choose resnet3d, candidates or detector")
        self.net = MultimodalModel({"ct": ct_encoder, "report": report_encoder}, config.fusion, heads)
        # Calibration: p = sigmoid(logit / temperature + bias), fitted after training.
        if config.evidence_sum and not config.aux_weight:
            raise ValueError("evidence_sum adds the per-modality heads' logits: it needs aux_weight > 0")
        if config.aux_weight:
            # per-modality heads: direct supervision for each branch, so the CT encoder learns even
            # while the gate still leans on the (easier) report
            self.aux = nn.ModuleDict({m: nn.Linear(config.fusion.dim, 1) for m in MODALITIES})
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("bias", torch.zeros(()))

    @property
    def uses_candidates(self) -> bool:
        """The CT branch reads candidates (crops + features), from the ranker or the detector."""
        return self.config.ct_kind in ("candidates", "detector")

    @property
    def uses_ranker(self) -> bool:
        return self.config.ct_kind == "candidates"

    @property
    def uses_detector(self) -> bool:
        return self.config.ct_kind == "detector"

    def extract_candidates(self, hu, spacing, proposals=None):
        """HU volume (D, H, W) + spacing (z, y, x) -> ``candidates.Candidates`` for the CT encoder:
        the detector's peaks, or the classical proposals (``proposals`` if computed) ranked by the ranker."""
        config = self.candidate_config()
        if self.uses_detector:
            from apps.medical.detector import detection_candidates

            return detection_candidates(hu, spacing, self.detector, config)
        from apps.medical.candidates import extract

        return extract(hu, spacing, config, ranker=self.rank_candidates, proposals=proposals)

    def candidate_config(self):
        from apps.medical.candidates import CandidateConfig

        stage = dict(self.config.candidate_stage)
        if "scales_mm" in stage:
            stage["scales_mm"] = tuple(stage["scales_mm"])  # JSON gives a list; the config is frozen/hashable
        return CandidateConfig(**stage)

    def rank_candidates(self, features):
        """Proposal features (P, F) numpy -> nodule logits (P,) numpy (the candidate stage's ranker)."""
        with torch.no_grad():
            return self.ranker(torch.as_tensor(features, dtype=torch.float32)).numpy()

    @property
    def ct_encoder(self) -> nn.Module:
        return self.net.encoders["ct"]

    @property
    def report_encoder(self) -> BertReportEncoder:
        return self.net.encoders["report"]

    def forward(self, ct: torch.Tensor | None, report: dict[str, torch.Tensor] | None,
                present: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (raw logits (B,), modality weights (B, 2) in MODALITIES order)."""
        if isinstance(ct, torch.Tensor) and self.config.intensity_levels:
            ct = posterise(ct, self.config.intensity_levels)
        out = self.net({"ct": ct, "report": report}, present=present)
        self.last_summaries = out.fusion.summaries  # (B, M, D), read by the auxiliary loss in training
        self.last_present = out.fusion.present.to(out.fusion.summaries.dtype)
        logits = out.logits[:, 0]
        if self.config.evidence_sum:
            logits = logits + (self.aux_logits() * self.last_present).sum(1)
        return logits, out.weights

    def aux_logits(self) -> torch.Tensor | None:
        """(B, M) per-modality logits from the last forward (None without aux heads)."""
        if not self.config.aux_weight:
            return None
        s = self.last_summaries
        return torch.cat([self.aux[m](s[:, i]) for i, m in enumerate(MODALITIES)], dim=1)

    @torch.no_grad()
    def modality_evidence(self) -> torch.Tensor | None:
        """(B, M) log-odds each present modality added to the last forward's logit, on the calibrated scale
        (divided by the temperature; 0 for an absent one); None unless ``evidence_sum``."""
        if not self.config.evidence_sum:
            return None
        return self.aux_logits() * self.last_present / self.temperature

    def calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits / self.temperature + self.bias)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """State without the frozen BERT (it is loaded from its own folder, not shipped)."""
        state = self.state_dict()
        if self.report_encoder.freeze:
            state = {k: v for k, v in state.items() if not k.startswith(BERT_PREFIX)}
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor], unused: tuple[str, ...] = ()) -> None:
        """Load a bundle's state. Tensors under ``unused`` (``unused_prefixes``: the absent input's modules of a
        single-input model) may be missing: their parameters are set to zeros and their buffers keep their
        initial values, finite either way, so a forward that runs them (a CT given with ``present`` False) still
        multiplies their output by an exact zero."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(BERT_PREFIX)]
        dropped = [k for k in missing if unused and k.startswith(unused)]
        missing = [k for k in missing if not (unused and k.startswith(unused))]
        if missing or unexpected:
            raise ValueError(f"bundle does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        parameters = dict(self.named_parameters())
        with torch.no_grad():
            for key in dropped:
                if key in parameters:
                    parameters[key].zero_()


class CandidateRanker(nn.Module):
    """Nodule-vs-other score of a proposal from its ``candidates.FEATURES``: the mean logit of a few
    small MLPs (different initialisations and batch orders, dropout) on features standardised with
    statistics of the training proposals (buffers, so they ship in the bundle). A single MLP ranked
    the training patients' nodules well and the validation patients' poorly; the averaged, dropped-out
    members generalise better. Trained on its own (``train.fit_ranker``) against the rendered nodules'
    positions."""

    def __init__(self, features: int, hidden: int = 64, members: int = 5, dropout: float = 0.3):
        super().__init__()
        self.dropout = dropout
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))
        self.members = nn.ModuleList(
            nn.ModuleList([nn.Linear(features, hidden), nn.Linear(hidden, hidden // 2), nn.Linear(hidden // 2, 1)])
            for _ in range(members))

    def set_statistics(self, features: torch.Tensor) -> None:
        self.mean.copy_(features.mean(0))
        self.std.copy_(features.std(0).clamp_min(1e-3))

    def member_logits(self, features: torch.Tensor, member: int) -> torch.Tensor:
        if features.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"ranker expects {self.mean.shape[0]} features, got {features.shape[-1]}")
        x = (features - self.mean) / self.std
        first, second, out = self.members[member]
        x = nn.functional.dropout(nn.functional.gelu(first(x)), self.dropout, self.training)
        x = nn.functional.dropout(nn.functional.gelu(second(x)), self.dropout, self.training)
        return out(x).squeeze(-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.member_logits(features, i) for i in range(len(self.members))]).mean(0)


def build_model(config: MedicalModelConfig, bert_path: str = "", bert_config: dict[str, Any] | None = None,
                freeze_bert: bool = True, bert_from: MedicalModel | None = None,
                fit_bert_width: bool = False) -> MedicalModel:
    """``bert_from``: a model whose BERT this one shares when both are frozen (one copy, not read again).

    ``fit_bert_width``: a new model about to be trained records the width of the BERT it is given in
    ``config.bert_hidden`` (a preset's value is what it expects by default: 384 for MiniLM, 16 for the
    tiny presets' test BERT); a model loaded from a bundle keeps the check that its BERT is the same width."""
    shared = bert_from.report_encoder if bert_from is not None and bert_from.report_encoder.freeze and freeze_bert else None
    report = BertReportEncoder(path=bert_path, bert_config=bert_config, max_length=config.clause_tokens,
                               max_segments=config.max_clauses, freeze=freeze_bert, risk_factors=config.risk_factors,
                               shared=shared)
    if fit_bert_width and report.dim != config.bert_hidden:
        config = config.replace(bert_hidden=report.dim)
    return MedicalModel(config, report)


def fit_calibration(logits: torch.Tensor, labels: torch.Tensor, steps: int = 100) -> tuple[float, float]:
    """Platt-style temperature + bias on held-out logits (minimises NLL); returns (temperature, bias).

    Falls back to identity (1, 0) when the held-out set has one class or the fit does not converge.
    """
    logits, y = logits.detach().double(), labels.detach().double()
    if len(y) < 2 or y.min() == y.max() or not torch.isfinite(logits).all():
        return 1.0, 0.0
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t, bias], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(logits / log_t.exp() + bias, y)
        loss.backward()
        return loss

    opt.step(closure)
    t, b = float(log_t.detach().exp()), float(bias.detach())
    if not (math.isfinite(t) and math.isfinite(b)):
        return 1.0, 0.0
    return min(max(t, 0.05), 20.0), min(max(b, -10.0), 10.0)


DETECTOR_PREFIX = "detector."
BERT_PREFIX = "net.encoders.report.bert."


def unused_prefixes(config: MedicalModelConfig, modalities: str) -> tuple[str, ...]:
    """State-dict prefixes of the modules a model trained with ``modalities`` (``both``, ``ct``, ``report``)
    never reads: the absent input's encoder, its projection, its modality-specific and co-attention blocks and
    its auxiliary head. An absent input's tokens are masked (``MultimodalModel.encode``) and every one of these
    modules' outputs is multiplied by that mask before anything else reads it, so their values cannot reach
    a logit, a modality weight or the evidence. Kept: everything shared (modality embeddings, shared layers,
    graph, gate, heads, calibration) and the CT candidate stage (detector or ranker; ``--share-detector``
    leaves the detector out on its own terms)."""
    if modalities == "both":
        return ()
    if modalities not in MODALITIES:
        raise ValueError(f"modalities must be both, ct or report, not {modalities!r}")
    (absent,) = (m for m in MODALITIES if m != modalities)
    return (f"net.encoders.{absent}.", f"net.projector.project.{absent}.", f"net.fusion.specific.{absent}.",
            *(f"net.fusion.cross.{i}.blocks.{absent}." for i in range(config.fusion.cross_layers)), f"aux.{absent}.")


def used_state(state: dict[str, torch.Tensor], config: MedicalModelConfig, modalities: str) -> dict[str, torch.Tensor]:
    """``state`` less the tensors a model of ``modalities`` never reads (``unused_prefixes``): what a
    single-input bundle ships."""
    unused = unused_prefixes(config, modalities)
    return {k: v for k, v in state.items() if not (unused and k.startswith(unused))}


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a module's weights (its state dict): which detector (or ranker) a model reads candidates with."""
    import hashlib

    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.float().numpy().tobytes())
    return digest.hexdigest()


def without_detector(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """A detector model's state less its detector, and the detector's digest: a single-input model trained
    on the candidates of the fusion model's detector ships without a copy of it (``load_model``'s
    ``detector_from``)."""
    detector = {k.removeprefix(DETECTOR_PREFIX): v for k, v in state.items() if k.startswith(DETECTOR_PREFIX)}
    if not detector:
        raise ValueError("the model holds no nodule detector")
    return {k: v for k, v in state.items() if not k.startswith(DETECTOR_PREFIX)}, weights_digest(detector)


def reads_same_ct(a: MedicalModel, b: MedicalModel) -> bool:
    """Whether two models turn a CT into the same input: one's ``load_ct`` output can be fed to the other."""
    ca, cb = a.config, b.config
    if (ca.ct_kind, list(ca.volume_shape), ca.candidate_stage) != (cb.ct_kind, list(cb.volume_shape), cb.candidate_stage):
        return False
    for part in ("detector", "ranker"):
        pa, pb = getattr(a, part, None), getattr(b, part, None)
        if (pa is None) != (pb is None):
            return False
        if pa is not None and weights_digest(pa.state_dict()) != weights_digest(pb.state_dict()):
            return False
    return True


def load_model(bundle_dir, bert_path: str = "", detector_from: MedicalModel | None = None,
               bert_from: MedicalModel | None = None) -> tuple[MedicalModel, Any]:
    """Model + bundle from a saved bundle; the frozen BERT comes from ``bert_path`` (or MiniLM), or is
    ``bert_from``'s (shared). A bundle saved without its detector (config ``detector_sha256``) takes it from
    ``detector_from``, which must hold that very detector: its candidates are what the bundle was trained on."""
    from core.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    config = MedicalModelConfig.from_dict(bundle.config["model"])
    model = build_model(config, bert_path=bert_path, bert_from=bert_from)
    wanted = bundle.config.get("detector_sha256")
    if wanted:
        if getattr(detector_from, "detector", None) is None:
            raise ValueError(f"bundle {bundle_dir} ships without its nodule detector: load it with the fusion model "
                             "whose detector it was trained on")
        shared = detector_from.detector.state_dict()
        if weights_digest(shared) != wanted:
            raise ValueError(f"bundle {bundle_dir} was trained on another nodule detector's candidates than the "
                             "fusion model given: train it again from that model's pack")
        bundle.state_dict.update({DETECTOR_PREFIX + k: v for k, v in shared.items()})
    expected = bundle.config.get("bert", {})
    actual = model.report_encoder.bert.config
    for key in ("hidden_size", "num_hidden_layers", "vocab_size"):
        if key in expected and int(getattr(actual, key)) != int(expected[key]):
            raise ValueError(
                f"bundle {bundle_dir} was trained with a different report BERT ({key} {expected[key]} vs "
                f"{getattr(actual, key)} in {model.report_encoder.source}); point bert_path at "
                f"{expected.get('path_hint', 'the same model')}"
            )
    # a single-input bundle ships without its absent input's modules (``used_state``); older ones carry them
    model.load_trainable_state(bundle.state_dict, unused_prefixes(config, bundle.config.get("modalities", "both")))
    model.eval()
    return model, bundle
