"""Settings of the factory QC app (env prefix ``TRIPTYCH_INDUSTRIAL_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from apps.industrial import WEIGHTS as WEIGHTS_DIR
from core.serving.settings import AppSettings


class IndustrialSettings(AppSettings):
    model_config = SettingsConfigDict(env_prefix="TRIPTYCH_INDUSTRIAL_", extra="ignore")

    detector_dir: Path = WEIGHTS_DIR / "detector"  # shipped detector bundle (YAML + safetensors); boards without template
    # Template-aware detector (input: image, template, |difference|) for boards sent WITH a template;
    # None or a folder without weights = templates only refute boxes, as before (detector card).
    template_detector_dir: Path | None = WEIGHTS_DIR / "detector_template"
    template_defect_threshold: float | None = None  # None = the template bundle's (chosen on held-out board groups)
    # Crop classifier that re-reads the class of each box the template detector finds (apps/industrial/
    # reclassify.py; sibling classes such as copper / spur / short); None or a folder without weights = off.
    defect_classifier_dir: Path | None = WEIGHTS_DIR / "defect_classifier"
    vibration_dir: Path = WEIGHTS_DIR / "vibration"  # shipped vibration classifier bundle
    fusion_dir: Path = WEIGHTS_DIR / "fusion"  # shipped fusion model bundle (optional: Bayesian fallback)
    px_per_mm: float = 48.0  # camera pixel pitch; DeepPCB scans are ~48 px/mm
    defect_threshold: float | None = None  # detection confidence that counts as a defect; None = the bundle's
    # "review" when the fused log-odds lie within logit(0.5 + band) of the decision cut (for the Bayesian rule the
    # image threshold's posterior; 0.5 for the learned fusion)
    review_band: float = 0.15
    min_defect_mm: float = 0.0  # defects smaller than this (longest side) are reported but do not fail a board
    # the same per defect class, e.g. TRIPTYCH_INDUSTRIAL_MIN_DEFECT_MM_BY_CLASS='{"spur": 0.1, "copper": 0.15}'
    # (a class not named: min_defect_mm); classes: open, short, mousebite, spur, copper, pin-hole
    min_defect_mm_by_class: dict[str, float] = Field(default_factory=dict)
    max_image_side: int = 4096  # refuse larger images (memory)
    min_image_side: int = 32
    max_batch_boards: int = 16  # boards per batch request
    # A request waits for the model request_timeout_s (meant for queueing and a small board) plus the work its
    # boards bring, since a batch call's boards share one model call: seconds_per_board each, and
    # seconds_per_megapixel per megapixel of image and of template. Measured on one thread here (shipped int8
    # detectors, detector_workers=1, 2 shared cores): a 640x640 board 0.07-0.25 s with or without template (up to
    # the 100 boxes the detector keeps); a 4096x4096 board 0.26-0.6 s alone, 1.2-2.7 s with its template while
    # registering the template scanned the whole board (0.7-1.2 s of it), 0.7-0.9 s since it samples ~320 points a
    # side; i.e. up to ~0.15 s a board plus ~0.08 s a megapixel. 16 such boards with templates took 26-42 s in one
    # model call before that change, 60 s through the API while other work shared the cores (its budget: 145 s).
    # The values keep 2.5-3x of that for a shared CPU. Vibration adds nothing that grows with the
    # file: at most 8 windows a board reach the model (decoding and resampling run before the queue).
    seconds_per_board: float = 0.5
    seconds_per_megapixel: float = 0.2
    torch_threads: int = 2  # CPU threads for inference
    # onnxruntime sessions sharing those threads; the boards of a batch (or of concurrent requests the serving
    # engine batches) are split across them: on 2 cores two 1-thread sessions give ~1.6x the boards/s of one
    # 2-thread session, at ~10 ms more latency for a lone board
    detector_workers: int = 2
    detector_backend: str = "onnx"  # "onnx" (onnxruntime, faster on CPU) or "torch"
    # "int8": each detector bundle's statically quantised ONNX model (onnx backend only): what the detector
    # cards' validation numbers, thresholds and Platt scaling were measured and fitted with, and faster on
    # CPU (README). "fp32" runs the float models, at thresholds fitted for INT8.
    detector_precision: str = "int8"
    # How image and vibration evidence become one decision: "bayes" (each detector bundle's own Platt
    # scaling + P(defective | machine state) from the fusion bundle; better than the learned fusion on
    # held-out board groups, see the fusion card), "learned" (the attention fusion model) or "image"
    # (detector rule only, vibration reported but not used).
    decision_rule: str = "bayes"


    @field_validator("min_defect_mm_by_class")
    @classmethod
    def _known_classes(cls, value: dict[str, float]) -> dict[str, float]:
        from apps.industrial.data import DEFECT_CLASSES

        unknown = sorted(set(value) - set(DEFECT_CLASSES))
        if unknown:
            raise ValueError(f"unknown defect classes {unknown}; classes are {', '.join(DEFECT_CLASSES)}")
        if any(not v >= 0 for v in value.values()):
            raise ValueError("sizes are millimetres >= 0")
        return value

    @field_validator("seconds_per_board", "seconds_per_megapixel")
    @classmethod
    def _a_cost_is_not_negative(cls, value: float) -> float:
        if not 0.0 <= value < float("inf"):
            raise ValueError("must be a finite number of seconds >= 0")
        return value

    @field_validator("review_band")
    @classmethod
    def _band_inside_a_probability(cls, value: float) -> float:
        # the band is read as logit(0.5 + band): 0.5 or more has no logit, and a negative band would make
        # "review" a gap that no board falls in
        if not 0.0 <= value < 0.5:
            raise ValueError("review_band is a probability distance from 0.5: 0 (no review) <= band < 0.5")
        return value


@lru_cache
def get_settings() -> IndustrialSettings:
    return IndustrialSettings()
