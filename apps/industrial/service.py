"""Inspection service logic, plain Python (no HTTP): decode and check inputs, run the models, decide.

``InspectionRunner.predict_batch`` is the core.serving ModelRunner: one call runs the detector over
all queued boards' images as one batch, the vibration classifier over all their windows, then the
fusion per board. Inputs are decoded and validated before they are queued (``decode_image``,
``decode_vibration``), so bad uploads are refused with a 4xx and never reach the models.
"""

from __future__ import annotations

import io
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from apps.industrial.data import FAULT_CLASSES
from apps.industrial.signals import MODEL_RATE, WINDOW, frame, resample, validate_signal

MAX_WINDOWS = 8  # vibration windows averaged per board (~1.4 s at 12 kHz)


# ------------------------------------------------------------------------------------ decoding
def decode_image(data: bytes, min_side: int = 32, max_side: int = 4096) -> np.ndarray:
    """Bytes of a PNG/JPEG/BMP/TIFF -> (H, W) uint8 grayscale as displayed; ValueError with what is wrong.

    An EXIF orientation (a camera's or phone's JPEG "rotate 90") is applied, as browsers and viewers apply
    it: the board the service inspects, and so every box_px, is the one a user sees (the web page draws
    the boxes over the image as the browser shows it). Images and templates both come through here; a file
    without the tag (DeepPCB's scans, PNG, TIFF, BMP) decodes exactly as before."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if max(width, height) > max_side or min(width, height) < min_side:
            raise ValueError(f"image is {width}x{height} px; accepted sides are {min_side}..{max_side} px")
        if _exif_orientation(image) in range(2, 9):
            from PIL import ImageOps

            image = ImageOps.exif_transpose(image)
        gray = _gray8(image)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"could not decode the image ({type(exc).__name__}); send a PNG, JPEG, BMP or TIFF") from None
    return gray


def _exif_orientation(image) -> int:
    """The EXIF orientation tag (1-8; 1 = upright) of an opened PIL image; 1 without one, or when the EXIF
    block cannot be read (a viewer then shows the pixels as stored too)."""
    try:
        return int(image.getexif().get(0x0112, 1))  # 0x0112: Orientation
    except Exception:  # noqa: BLE001 - a malformed EXIF block is not a reason to refuse the board
        return 1


# Full scales of the sensors' common bit depths (10, 12, 14, 16 bit): a frame is scaled from the smallest
# that holds its brightest pixel.
SENSOR_FULL_SCALES = (1023, 4095, 16383, 65535)


def _gray8(image) -> np.ndarray:
    """(H, W) uint8 grayscale of a PIL image. PIL's own conversion clips 16-bit and float frames at 255,
    so a line camera's 12- or 16-bit frame would reach the detector almost white; those are scaled
    instead: integers from the smallest sensor full scale that holds them, floats in 0..1 from 1."""
    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return np.asarray(image.convert("L"))
    values = np.asarray(image, dtype=np.float64)
    top = float(values.max(initial=0.0))
    if image.mode == "F" and top <= 1.0:
        full = 1.0
    elif top <= 255:
        full = 255.0
    else:
        full = float(next((s for s in SENSOR_FULL_SCALES if top <= s), top))
    return np.clip(np.rint(values * (255.0 / full)), 0, 255).astype(np.uint8)


def check_sample_rate(sample_rate: float | None) -> None:
    """A sample rate given with the data is a positive, finite number of Hz, whatever the file's type (NaN
    compares false with every rate, so a later comparison would let it through)."""
    if sample_rate is not None and not 0 < sample_rate < float("inf"):
        raise ValueError("sample_rate must be a positive number")


def decode_vibration(data: bytes, kind: str | None, sample_rate: float | None) -> tuple[np.ndarray, float]:
    """CSV / NPY / WAV bytes -> (1-D float signal, sample rate). WAV carries its own rate."""
    check_sample_rate(sample_rate)
    if kind == "wav" or data[:4] == b"RIFF":
        import soundfile as sf

        try:
            signal, rate = sf.read(io.BytesIO(data), dtype="float64", always_2d=True)
        except Exception:  # noqa: BLE001 - any decoder failure is the client's bad file
            raise ValueError("could not decode the WAV vibration file") from None
        if sample_rate is not None and abs(float(sample_rate) - rate) > 0.5:
            raise ValueError(f"sample_rate {sample_rate:g} Hz contradicts the WAV header's {rate} Hz")
        signal, sample_rate = signal[:, 0], float(rate)
    elif kind == "npy" or data[:6] == b"\x93NUMPY":
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception:  # noqa: BLE001 - any decoder failure is the client's bad file
            raise ValueError("could not read the .npy vibration file (object arrays are refused)") from None
        if array.dtype.kind not in "fiu":
            raise ValueError(f"the .npy array has dtype {array.dtype}; a numeric array is needed")
        if array.ndim == 2 and 1 in array.shape:
            array = array.reshape(-1)
        if array.ndim != 1:
            raise ValueError(f"the .npy array has shape {array.shape}; a 1-D signal (or N x 1) is needed")
        signal = array.astype(np.float64)
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("the vibration file is not CSV, NPY or WAV") from None
        signal = _csv_first_column_fast(text)
        if signal is None:
            signal = _csv_first_column(text)
    if sample_rate is None:
        raise ValueError("sample_rate (Hz) is required for CSV and NPY vibration data")
    sample_rate = float(sample_rate)
    validate_signal(signal, sample_rate)
    return signal, sample_rate


def _csv_cell(line: str, semicolons: bool) -> str:
    if semicolons:  # semicolon-separated files (spreadsheets in much of Europe) write decimal commas
        return line.split(";", 1)[0].strip().replace(",", ".")
    return re.split(r"[,\t ]+", line.strip(), maxsplit=1)[0]


def _csv_first_column(text: str) -> np.ndarray:
    """The first column's numbers, line by line: every layout ``decode_vibration`` accepts, and the
    message that says what is wrong with one it does not."""
    values = []
    semicolons = ";" in text[:4096]
    for line in text.splitlines():
        cell = _csv_cell(line, semicolons)
        if not cell:
            continue
        try:
            values.append(float(cell))
        except ValueError:
            if values:  # a header is fine, text in the middle of the data is not
                raise ValueError(f"non-numeric value {cell[:20]!r} in the vibration CSV after {len(values)} samples") from None
    if not values:
        raise ValueError("no numbers in the vibration CSV's first column: send one sample per line (the first "
                         "column of comma, tab or space separated values with a decimal point, or semicolon separated with a decimal "
                         "comma; an optional header line)")
    return np.asarray(values, np.float64)


def _csv_first_column_fast(text: str) -> np.ndarray | None:
    """The common layout (decimal points, one delimiter, at most one header line) through numpy's C
    reader, about 5x faster than the line loop on a 40 MB file; None for anything else, which the
    line loop then reads (or explains)."""
    head = text[:4096]
    if ";" in head:
        return None
    lines = head.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        return None
    try:
        float(_csv_cell(lines[first], False))
        skip = first
    except ValueError:
        skip = first + 1  # one header line
    sample = next((line for line in lines[skip:] if line.strip()), "")
    delimiter = "," if "," in sample else None  # None: runs of spaces or tabs
    try:
        values = np.loadtxt(io.StringIO(text), delimiter=delimiter, usecols=0, skiprows=skip, ndmin=1, dtype=np.float64)
    except ValueError:
        return None
    return values if values.size else None


def vibration_windows(signal: np.ndarray, sample_rate: float) -> np.ndarray:
    """Resample to the model rate and take up to MAX_WINDOWS most recent non-overlapping windows."""
    x = resample(signal, round(sample_rate), MODEL_RATE)
    windows = frame(x[-WINDOW * MAX_WINDOWS :])
    if len(windows) == 0:
        raise ValueError(f"the vibration signal is shorter than one {WINDOW}-sample window at {MODEL_RATE} Hz")
    return windows


# ------------------------------------------------------------------------------------ the runner
WARM_UP_SIDE = 640  # DeepPCB's board size: the detectors' usual input shape
@dataclass
class InspectionItem:
    image: np.ndarray | None  # (H, W) uint8
    template: np.ndarray | None = None
    windows: np.ndarray | None = None  # (K, 2048) at 12 kHz
    timings: dict = field(default_factory=dict)


# Share of differing pixels in a box below which the board's template refutes the detection: the box
# then neither fails the board nor counts toward its evidence (it is still listed, marked refuted).
TEMPLATE_MIN_DIFF = 0.01


@dataclass
class DecisionPolicy:
    defect_threshold: float  # detection confidence that fails a board (image-only rule)
    report_threshold: float = 0.25  # detections listed as defects from this confidence
    review_band: float = 0.15
    min_defect_mm: float = 0.0
    px_per_mm: float = 48.0
    template_min_diff: float = TEMPLATE_MIN_DIFF
    # per defect class, the size (mm, longest side) below which it is acceptable, as a line's workmanship
    # standard sets it (an IPC-A-600 class allows a small spur, never an open); a class not named: min_defect_mm
    min_defect_mm_by_class: dict[str, float] = field(default_factory=dict)
    # Boards whose request brought a template are scored by the template-aware detector (or by a
    # template-aware default detector with its template channels), on another scale: their own
    # threshold (each bundle's `conf`, chosen on board groups it never trained on). None = defect_threshold.
    defect_threshold_template: float | None = None
    # A template-aware detector used WITHOUT a template (no difference channel) has its own threshold too.
    defect_threshold_no_template: float | None = None

    def min_size_mm(self, defect_class: str) -> float:
        return self.min_defect_mm_by_class.get(defect_class, self.min_defect_mm)

    def threshold(self, has_template: bool) -> float:
        if has_template:
            return self.defect_threshold if self.defect_threshold_template is None else self.defect_threshold_template
        return self.defect_threshold if self.defect_threshold_no_template is None else self.defect_threshold_no_template


def template_support(gray: np.ndarray, template: np.ndarray, box) -> float:
    """Share of pixels inside the box where the binarised image and template differ."""
    from apps.industrial.data import binarize

    x1, y1, x2, y2 = (round(v) for v in box)
    a = binarize(gray[y1:y2, x1:x2])
    b = binarize(template[y1:y2, x1:x2])
    return float((a != b).mean()) if a.size else 0.0


@dataclass
class BoardEvidence:
    """What one board's detections say once the policy has read them."""

    defects: list[dict]  # the listed detections (>= report threshold), marked refuted_by_template / below_min_size
    decisive: list  # the detections the decision rests on: neither refuted by the template nor below their minimum size
    refuted: int  # listed detections the template refuted
    max_conf: float  # the board's score: the highest confidence among the decisive detections (0 without one)
    n_defects: int  # decisive detections at or above the report threshold


def board_evidence(dets, image: np.ndarray | None, template: np.ndarray | None, policy: DecisionPolicy) -> BoardEvidence:
    """Each detection as the line reads it (``Detection.to_dict``, template support, acceptable size) and the
    board's evidence. A box the template refutes or one below its class's minimum size is listed but does not
    count: a board fails on the defects that matter, not on noise or what the workmanship standard allows."""
    defects, decisive, refuted = [], [], 0
    compare = template is not None and image is not None and template.shape == image.shape
    for d in dets:
        record = d.to_dict(policy.px_per_mm)
        if compare:
            support = template_support(image, template, d.box_px)
            record["template_difference"] = round(support, 4)
            if support < policy.template_min_diff:
                record["refuted_by_template"] = True
        if record["size_mm"] < policy.min_size_mm(record["class"]):
            record["below_min_size"] = True  # listed, acceptable by size: it does not fail the board
        if d.confidence >= policy.report_threshold:
            defects.append(record)
            refuted += bool(record.get("refuted_by_template"))
        if not record.get("refuted_by_template") and not record.get("below_min_size"):
            decisive.append(d)
    # Evidence as in the fusion's training events: max confidence over all boxes the NMS kept
    # (>= 0.05), defect count over the listed ones.
    max_conf = max((d.confidence for d in decisive), default=0.0)
    n_defects = sum(d.confidence >= policy.report_threshold for d in decisive)
    return BoardEvidence(defects, decisive, refuted, max_conf, n_defects)


def detector_route(has_template: bool, det_input: str, has_template_detector: bool) -> tuple[bool, bool]:
    """How a board with an image is read: (by the template-aware second detector?, with its template?).

    A board that brings a template goes to the template-aware detector when one is loaded; every other board
    to the default detector (``detector_dir``), which takes the template only when it is a template-diff
    detector itself. THE rule of ``InspectionRunner`` and of the evaluation (``evaluate.board_scores``)."""
    if has_template and has_template_detector:
        return True, True
    return False, has_template and det_input == "template-diff"


def detector_combiner(det_bundle, fitted):
    """The Bayesian rule with a detector bundle's own Platt scaling and ``fitted``'s vibration side (P(d | state),
    train prior); None when the bundle has no ``platt``."""
    platt = det_bundle.config.get("platt") if det_bundle is not None else None
    return fitted.with_platt(platt) if platt else None


class InspectionRunner:
    """ModelRunner over boards: detector + vibration classifier + fusion (learned, else Bayesian)."""

    reclassifier = None  # optional reclassify.DefectReclassifier for the template detector's boxes

    def __init__(self, detector, det_config, det_bundle, vibration, vib_bundle, fusion=None, fusion_bundle=None,
                 policy: DecisionPolicy | None = None, threads: int = 2, decision_rule: str = "bayes",
                 template_detector=None, template_config=None, template_bundle=None, reclassifier=None):
        import torch

        torch.set_num_threads(threads)
        self.detector, self.det_config = detector, det_config
        # Optional second detector trained on (image, template, |difference|): boards sent with a
        # template go to it, boards without one to `detector` (one model could not do both as well).
        self.template_detector, self.template_config = template_detector, template_config
        self.vibration, self.fusion = vibration, fusion
        # Re-reads the class of the template detector's boxes from crops (reclassify.py): classes change, and a
        # box that now repeats a stronger one of its class is dropped; confidences, hence board decisions, do not.
        self.reclassifier = reclassifier
        self.policy = policy or DecisionPolicy(det_config.conf, px_per_mm=det_config.px_per_mm)
        self.name = "inspect"
        bundles = [b for b in (det_bundle, template_bundle, vib_bundle, fusion_bundle) if b is not None]
        self.version = "+".join(f"{b.card.name}@{b.card.version}" for b in bundles)
        self.sha256 = ",".join(b.sha256[:16] for b in bundles)
        if reclassifier is not None:
            self.version += f"+industrial-defect-classifier@{reclassifier.version}"
            self.sha256 += f",{reclassifier.sha256[:16]}"
        self.bayes = self.bayes_template = None
        if fusion_bundle is not None and fusion_bundle.config.get("bayes"):
            from apps.industrial.benchmark import BayesianCombiner

            fitted = BayesianCombiner(**fusion_bundle.config["bayes"])
            # Each detector's own score calibration (its bundle's `platt`, fitted on board groups it never
            # trained on) with the fusion's vibration side; the fusion's Platt only for a detector without one.
            self.bayes = detector_combiner(det_bundle, fitted) or fitted
            self.bayes_template = detector_combiner(template_bundle, fitted)
        if decision_rule not in ("bayes", "learned", "image"):
            raise ValueError(f"decision_rule must be bayes, learned or image, not {decision_rule!r}")
        if decision_rule == "bayes" and self.bayes is None or decision_rule == "learned" and fusion is None:
            decision_rule = "image"  # the fusion bundle is optional; without it the detector decides
        self.decision_rule = decision_rule

    def warm_up(self) -> None:
        """Run one synthetic board through every path at load time (image alone, image + template, a
        vibration file at another rate), so that /ready means ready: the first board otherwise pays
        one-off costs inside its request (onnxruntime's first run of each detector, ~2 s; importing
        scipy's resampler, ~1.5 s on two cores)."""
        rng = np.random.default_rng(0)
        board = np.full((WARM_UP_SIDE, WARM_UP_SIDE), 255, np.uint8)
        board[rng.integers(0, WARM_UP_SIDE, 400), rng.integers(0, WARM_UP_SIDE, 400)] = 0
        windows = vibration_windows(np.sin(np.arange(3 * WINDOW) * 0.3), 2 * MODEL_RATE)
        for result in self.predict_batch([InspectionItem(board), InspectionItem(board, board.copy(), windows)]):
            if isinstance(result, Exception):
                raise RuntimeError("the industrial models failed on a synthetic board at load time") from result
        if self.reclassifier is not None:
            self.reclassifier.warm_up()  # a blank board has no box for it to re-read

    def predict_batch(self, items: list[InspectionItem]) -> list:
        import torch

        from apps.industrial.detector import detect_with_tokens, prepare_image

        results: list = [None] * len(items)
        t0 = time.perf_counter()
        self.align_templates(items)
        # Detector: one batch per detector over the items that have an image.
        det_out, tokens = {}, {}
        for detector, config, group in self._detector_groups(items):
            # The same encoding as the training data and the evaluation (data.encode_input): with the
            # board's template when the request brought one, the "no template" encoding otherwise.
            prepared = [prepare_image(items[i].image, config, items[i].template, registered=True) for i in group]
            dets, toks = detect_with_tokens(detector, prepared, config, conf=0.05)
            if self.reclassifier is not None and detector is self.template_detector:
                dets = self.reclassifier.relabel_many(dets, [p.encoded for p in prepared], nms_iou=config.iou)
            for k, i in enumerate(group):
                det_out[i], tokens[i] = dets[k], toks[k]
        t_det = (time.perf_counter() - t0) * 1000
        # Vibration: one batch over all windows of all items.
        t0 = time.perf_counter()
        with_vib = [i for i, it in enumerate(items) if it.windows is not None]
        vib_probs, vib_tokens = {}, {}
        if with_vib:
            stacked = np.concatenate([items[i].windows for i in with_vib]).astype(np.float32)
            with torch.inference_mode():
                enc = self.vibration.encoder(torch.from_numpy(stacked))
                probs = self.vibration.head(enc.pooled()).softmax(-1).numpy()
            start = 0
            for i in with_vib:
                k = len(items[i].windows)
                vib_probs[i] = probs[start : start + k].mean(0)
                vib_tokens[i] = enc.tokens[start : start + k].mean(0).numpy()
                start += k
        t_vib = (time.perf_counter() - t0) * 1000
        for i, item in enumerate(items):
            try:
                results[i] = self._decide(item, det_out.get(i), tokens.get(i), vib_probs.get(i), vib_tokens.get(i), t_det, t_vib)
            except Exception as exc:  # noqa: BLE001 - one bad board must not sink the batch
                results[i] = exc
        return results

    @staticmethod
    def align_templates(items: list[InspectionItem]) -> None:
        """Register every board's template to its image once (``data.align_template``), in place: the
        detector input and the template refutation then share it (a template a few pixels off would
        support every box along its misregistered edges)."""
        from apps.industrial.data import align_template

        for item in items:
            if item.template is not None and item.image is not None and item.template.shape == item.image.shape:
                item.template = align_template(item.image, item.template)

    def _route(self, item) -> tuple[bool, bool]:
        """(read by the template-aware detector?, with its template?) for a board with an image (``detector_route``)."""
        return detector_route(item.template is not None and item.image is not None, self.det_config.input,
                              self.template_detector is not None)

    def _uses_template(self, item) -> bool:
        """Whether this board's detection takes its template as input (else: the image alone)."""
        return item.image is not None and self._route(item)[1]

    def _detector_groups(self, items):
        plain = [i for i, it in enumerate(items) if it.image is not None and not self._route(it)[0]]
        templated = [i for i, it in enumerate(items) if it.image is not None and self._route(it)[0]]
        groups = [(self.detector, self.det_config, plain)]
        if templated:
            groups.append((self.template_detector, self.template_config, templated))
        return [g for g in groups if g[2]]

    def judge(self, item, dets, tokens=None, probs=None, vtokens=None) -> tuple[BoardEvidence, dict]:
        """One board's evidence (``board_evidence``) and verdict: ``decision``, ``defect_probability`` (NaN when no
        rule gave one), ``modality_weights``, ``detector_input``. ``dets`` None: the board has no image.

        THE decision of the endpoint (``_decide``) and of the evaluation (``evaluate.board_scores``), so that a
        setting (threshold, minimum sizes, review band, rule) moves both alike."""
        import torch

        policy = self.policy
        evidence = board_evidence(dets or [], item.image, item.template, policy)
        max_conf, n_def = evidence.max_conf, evidence.n_defects
        has_template = self._uses_template(item)
        image_fail = max_conf >= policy.threshold(has_template)
        has_image, has_vib = dets is not None, probs is not None
        # Image rule (or no evidence moved the odds): the image decides when present.
        weights = {"image": float(has_image), "vibration": 0.0 if has_image else float(has_vib)}
        p_defect, log_odds, cut = float("nan"), float("nan"), 0.0
        if self.decision_rule == "learned":
            from apps.industrial.benchmark import _logit

            in_dim = self.fusion.config.image.in_dim
            img_tok = torch.from_numpy(tokens[None] if tokens is not None else np.zeros((1, 16, in_dim), np.float32))
            vib_tok = torch.from_numpy(vtokens[None] if vtokens is not None else np.zeros((1, 64, self.fusion.config.vibration_dim), np.float32))
            evidence_in = np.concatenate([[_logit(np.array(max(max_conf, 1e-4))), np.log1p(n_def)], probs if has_vib else np.zeros(4)])
            with torch.inference_mode():
                logit, w = self.fusion(img_tok.float(), vib_tok.float(), torch.from_numpy(evidence_in[None].astype(np.float32)),
                                       torch.tensor([[has_image, has_vib]]))
            log_odds = float(logit[0])
            p_defect = float(torch.sigmoid(logit)[0])
            weights = {"image": round(float(w[0, 0]), 4), "vibration": round(float(w[0, 1]), 4)}
        elif self.decision_rule == "bayes" and (self.bayes_template is not None or not has_template or self.template_detector is None):
            from apps.industrial.benchmark import _logit

            # Scores of the template detector are calibrated separately (its bundle's `platt`).
            bayes = self.bayes_template if has_template and self.template_detector is not None else self.bayes
            conf = np.array([max(max_conf, 1e-4)]) if has_image else None
            vib = probs[None] if has_vib else None
            if conf is not None or vib is not None:
                log_odds = float(bayes.log_odds(conf, vib)[0])
                p_defect = float(bayes.combine(conf, vib)[0])
            # The posterior is cut where the image rule cuts (``BayesianCombiner.decision_logit``).
            cut = bayes.decision_logit(policy.threshold(has_template))
            # Weight of evidence: each modality's share of the absolute log-odds it moved.
            image_llr = abs(float(bayes.image_llr(conf)[0])) if has_image else 0.0
            vib_llr = abs(float(_logit(bayes.p_vibration(vib))[0] - _logit(np.array(bayes.train_prior)))) if has_vib else 0.0
            total = image_llr + vib_llr
            if total > 0:
                weights = {"image": round(image_llr / total, 4), "vibration": round(vib_llr / total, 4)}
        elif has_image:
            p_defect, log_odds = (1.0, float("inf")) if image_fail else (0.0, float("-inf"))
        rule = self.decision_rule if not np.isnan(p_defect) or not has_image else "image"
        return evidence, {
            "decision": self._decision(log_odds, has_image, image_fail, rule, cut),
            "defect_probability": p_defect,
            "modality_weights": weights,
            "detector_input": None if not has_image else ("image+template" if has_template else "image"),
        }

    def _decide(self, item, dets, tokens, probs, vtokens, t_det, t_vib) -> dict:
        t0 = time.perf_counter()
        evidence, verdict = self.judge(item, dets, tokens, probs, vtokens)
        state = None
        if probs is not None:
            k = int(np.argmax(probs))
            state = {"label": FAULT_CLASSES[k], "probabilities": {c: round(float(p), 4) for c, p in zip(FAULT_CLASSES, probs)}}
        timings = dict(item.timings)
        timings.update({"detector_ms": round(t_det, 2), "vibration_ms": round(t_vib, 2), "fusion_ms": round((time.perf_counter() - t0) * 1000, 2)})
        p_defect = verdict["defect_probability"]
        return {
            "defects": evidence.defects,
            "machine_state": state,
            "decision": verdict["decision"],
            "defect_probability": None if np.isnan(p_defect) else round(p_defect, 4),
            "modality_weights": verdict["modality_weights"],
            "template_refuted": evidence.refuted,
            "detector_input": verdict["detector_input"],
            "timings_ms": timings,
        }

    def _decision(self, z: float, has_image: bool, image_fail: bool, rule: str | None = None, cut: float = 0.0) -> str:
        """pass / fail / review from the defect log-odds ``z``, cut at ``cut`` (0: probability 0.5) with the review
        band ``0.5 +- review_band`` carried to that cut in log-odds."""
        from apps.industrial.benchmark import FAIL, review_decisions

        verdict = int(review_decisions(np.array([z]), cut, self.policy.review_band)[0])
        if not has_image:
            # Never pass a board nobody looked at; a machine fault alone can still fail it.
            return "fail" if verdict == FAIL else "review"
        if (rule or self.decision_rule) == "image":
            return "fail" if image_fail else "pass"
        return ("pass", "review", "fail")[verdict]


def decision_policy(settings, det_config, template_config=None) -> DecisionPolicy:
    """The board policy ``settings`` give with these detectors: each path's threshold (the settings' when set, else
    the bundles'), the review band, minimum sizes, pixel pitch."""
    if settings.defect_threshold is not None:
        threshold, threshold_no_template = settings.defect_threshold, None
    else:
        threshold, threshold_no_template = det_config.conf, det_config.decision_threshold(False)
    threshold_template = settings.template_defect_threshold
    if threshold_template is None and template_config is not None:
        threshold_template = template_config.conf
    return DecisionPolicy(threshold, det_config.report_conf, settings.review_band, settings.min_defect_mm, settings.px_per_mm,
                          defect_threshold_template=threshold_template, defect_threshold_no_template=threshold_no_template,
                          min_defect_mm_by_class=dict(settings.min_defect_mm_by_class))


def fitting_fusion(fusion_dir: Path, det_bundle, vib_bundle):
    """(fusion model, fusion bundle) from ``fusion_dir`` as far as they fit these bundles: (None, None) without one."""
    from apps.industrial.model import load_fusion_model

    if not (fusion_dir / "model.safetensors").exists():
        return None, None
    log = logging.getLogger(__name__)
    fusion, fusion_bundle = load_fusion_model(fusion_dir)
    fitted_on = fusion_bundle.config.get("detector_sha256")
    if fitted_on is not None and fitted_on != det_bundle.sha256:
        # The learned model read another detector's tokens and scores: deciding with it would be wrong, not
        # just stale. The Bayesian rule's vibration side (P(d | state)) does not depend on the detector, so
        # it stays when the detector brings its own Platt scaling; without one only the image rule is left.
        own_platt = bool(det_bundle.config.get("platt"))
        log.warning(
            "fusion bundle was fitted on detector %s, not %s: learned fusion off; %s", fitted_on[:12], det_bundle.sha256[:12],
            "Bayesian rule with the detector's own Platt scaling" if own_platt else "deciding with the image rule")
        fusion = None
        if not own_platt:
            fusion_bundle = None
    vib_fitted_on = fusion_bundle.config.get("vibration_sha256") if fusion_bundle is not None else None
    if vib_fitted_on is not None and vib_fitted_on != vib_bundle.sha256:
        # P(defective | machine state) was counted over another classifier's predicted states: both fused
        # rules would read this one's states with the wrong rates.
        log.warning("fusion bundle was fitted on vibration classifier %s, not %s: deciding with the image rule",
                    vib_fitted_on[:12], vib_bundle.sha256[:12])
        fusion = fusion_bundle = None
    return fusion, fusion_bundle


def assemble_runner(settings, detector, det_config, det_bundle, vibration, vib_bundle, template_detector=None,
                    template_config=None, template_bundle=None, reclassifier=None) -> InspectionRunner:
    """The runner ``settings`` make of loaded models: their pixel pitch, the fusion bundle where it fits them, the
    decision policy and rule. Shared by the service (``load_runner``) and the evaluation, which loads the
    detectors its own way (``evaluate.evaluate_deeppcb``): both then decide a board with the same settings alike."""
    for config in (det_config, template_config):
        if config is not None:
            config.px_per_mm = settings.px_per_mm
    fusion, fusion_bundle = fitting_fusion(Path(settings.fusion_dir), det_bundle, vib_bundle)
    policy = decision_policy(settings, det_config, template_config)
    return InspectionRunner(detector, det_config, det_bundle, vibration, vib_bundle, fusion, fusion_bundle, policy,
                            settings.torch_threads, settings.decision_rule, template_detector, template_config, template_bundle,
                            reclassifier)


def load_runner(settings) -> InspectionRunner:
    """The shipped bundles named by the settings (fusion optional)."""
    from apps.industrial.detector import load_detector, load_onnx_detector, refuse_checkpoint
    from apps.industrial.model import load_vibration_classifier

    precision = settings.detector_precision

    def load(bundle_dir):
        if settings.detector_backend == "onnx":
            return load_onnx_detector(bundle_dir, threads=settings.torch_threads, precision=precision,
                                      workers=settings.detector_workers)
        if settings.detector_backend == "torch":
            if precision != "fp32":
                raise ValueError(f"detector_precision={precision!r} needs detector_backend='onnx' (the torch backend runs fp32)")
            return load_detector(bundle_dir)
        raise ValueError(f"detector_backend must be onnx or torch, not {settings.detector_backend!r}")

    detector, det_config, det_bundle = load(settings.detector_dir)
    template_detector = template_config = template_bundle = None
    if settings.template_detector_dir is not None:
        # a folder without model.safetensors turns template detection off; a checkpoint there is a mistake to name
        refuse_checkpoint(settings.template_detector_dir)
    if settings.template_detector_dir is not None and (Path(settings.template_detector_dir) / "model.safetensors").exists():
        template_detector, template_config, template_bundle = load(settings.template_detector_dir)
        if template_config.input != "template-diff":
            raise ValueError(f"{settings.template_detector_dir} holds a {template_config.input!r}-input detector, not a template-diff one")
    vibration, vib_bundle = load_vibration_classifier(settings.vibration_dir)
    reclassifier = None
    if (template_detector is not None and settings.defect_classifier_dir is not None
            and (Path(settings.defect_classifier_dir) / "model.safetensors").exists()):
        from apps.industrial.reclassify import load_reclassifier

        backend = "onnx" if settings.detector_backend == "onnx" else "torch"
        reclassifier = load_reclassifier(settings.defect_classifier_dir, threads=settings.torch_threads, backend=backend)
    runner = assemble_runner(settings, detector, det_config, det_bundle, vibration, vib_bundle, template_detector,
                             template_config, template_bundle, reclassifier)
    runner.warm_up()
    if settings.detector_backend == "onnx" and precision == "int8":
        # What runs is detector-int8.onnx: X-Model-Version / X-Model-Sha256 say so.
        for bundle in (det_bundle, template_bundle):
            if bundle is None:
                continue
            runner.version = runner.version.replace(f"{bundle.card.name}@{bundle.card.version}",
                                                    f"{bundle.card.name}@{bundle.card.version}-int8", 1)
            runner.sha256 = runner.sha256.replace(bundle.sha256[:16], bundle.card.extra["int8"]["sha256"][:16], 1)
    return runner
