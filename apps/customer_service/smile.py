"""Voice-emotion feature blocks: openSMILE functionals, ComParE_2016 (6,373) and eGeMAPSv02 (88), and
(``voice_features``) their concatenation with the 434 statistics and the GE2E speaker-encoder statistics.

The standard paralinguistic feature sets, computed by the SMILExtract library bundled in the
``opensmile`` wheel (its configs ship in the wheel too: nothing is fetched at run time). The
audio gets the same preparation as ``features.acoustic_features`` (16 kHz mono, silence at both
ends trimmed, peak normalised) so the two can be concatenated and so recording gain does not
move the loudness functionals.

``opensmile`` (and its pandas dependency) is imported lazily: the service and CLI import this module.
"""

from __future__ import annotations

import threading
from functools import cache

import numpy as np

SAMPLE_RATE = 16000
# name used in bundles -> (opensmile FeatureSet member, number of functionals)
FEATURE_SETS: dict[str, tuple[str, int]] = {
    "compare": ("ComParE_2016", 6373),
    "egemaps": ("eGeMAPSv02", 88),
}
# Every feature block a voice bundle may list, in the order they are concatenated.
STATS = "stats"  # the 434 utterance statistics of features.acoustic_features

_LOCK = threading.Lock()  # one SMILExtract instance per feature set, shared by the service's threads


@cache
def _extractor(name: str):
    import opensmile

    if name not in FEATURE_SETS:
        raise KeyError(f"unknown openSMILE feature set {name!r}; choose from {sorted(FEATURE_SETS)}")
    return opensmile.Smile(
        feature_set=getattr(opensmile.FeatureSet, FEATURE_SETS[name][0]),
        feature_level=opensmile.FeatureLevel.Functionals,
        multiprocessing=False,
        num_workers=1,
    )


def smile_features(audio: np.ndarray, sr: int = SAMPLE_RATE, feature_set: str = "compare",
                   prepared: bool = False) -> np.ndarray:
    """(n_functionals,) float32 openSMILE functionals of one utterance (non-finite values -> 0)."""
    from apps.customer_service.features import prepare_utterance

    x = audio if prepared else prepare_utterance(audio, sr)
    extractor = _extractor(feature_set)
    with _LOCK:
        values = extractor.process_signal(x, SAMPLE_RATE).to_numpy()
    out = np.nan_to_num(values.reshape(-1).astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    expected = FEATURE_SETS[feature_set][1]
    if out.size != expected:
        raise RuntimeError(f"openSMILE {feature_set} gave {out.size} functionals, expected {expected}")
    return out


def feature_names(feature_set: str = "compare") -> list[str]:
    return list(_extractor(feature_set).feature_names)


def voice_features(audio: np.ndarray, blocks: list[str] | tuple[str, ...], sr: int = SAMPLE_RATE) -> np.ndarray:
    """The concatenation of ``blocks`` (``"stats"``, ``"compare"``, ``"egemaps"``, ``"ge2e"``, ``"whisper"``) for one utterance."""
    from apps.customer_service import ge2e, whisper_encoder
    from apps.customer_service.features import acoustic_features, prepare_utterance

    prepared = prepare_utterance(audio, sr)
    parts = []
    for block in blocks:
        if block == STATS:
            parts.append(acoustic_features(prepared, prepared=True))
        elif block == ge2e.BLOCK:
            parts.append(ge2e.statistics(prepared))
        elif block == whisper_encoder.BLOCK:
            parts.append(whisper_encoder.statistics(prepared))
        else:
            parts.append(smile_features(prepared, feature_set=block, prepared=True))
    return np.concatenate(parts).astype(np.float32)
