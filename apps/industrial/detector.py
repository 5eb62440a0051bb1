"""PCB defect detector: two ultralytics model configs, training, shipped-weight loading, inference, mAP.

Two architectures stay trainable: ``yolov7-tiny`` (ELAN/PAN rebuilt from ultralytics layers, see
``configs/yolov7-tiny.yaml``) and ``yolo11n`` (ultralytics' own nano model). Shipped weights are a
safetensors state_dict plus the model YAML; they are loaded into ultralytics' ``DetectionModel``
without unpickling anything. Everything here imports torch/ultralytics lazily.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from apps.industrial.data import DEFECT_CLASSES, encode_input

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
ARCHITECTURES = ("yolo11n", "yolo11s", "yolov7-tiny")


@dataclass
class DetectorConfig:
    arch: str = "yolo11n"  # one of ARCHITECTURES
    imgsz: int = 640  # inference size (DeepPCB tiles are 640x640; others are letterboxed)
    conf: float = 0.75  # board decision: a detection at or above this fails the board (chosen on validation groups)
    report_conf: float = 0.25  # detections at or above this are listed as defects (with their confidence)
    nms_conf: float = 0.001  # lower bound kept for mAP (PR curve needs low-confidence boxes)
    iou: float = 0.6  # NMS IoU
    binarize: bool = True  # threshold at 128 like the training data (DeepPCB scans are bilevel)
    px_per_mm: float = 48.0  # pixel pitch for size_mm (DeepPCB: ~48 px/mm)
    max_det: int = 100
    # "gray" (tested image in all 3 channels, the first detector) or "template-diff" (test, template,
    # |test - template|; without a template: test, test, 0). See apps.industrial.data.encode_input.
    input: str = "gray"
    conf_no_template: float | None = None  # board decision threshold when no template is given (None = conf)
    # Gray (114) margin in pixels around the letterboxed image: the network runs on an (imgsz + 2 * border)
    # square. ultralytics validates a 640 tile on a 672 canvas (rect batches pad half a stride); the shipped
    # template-aware detector boxes defects better with that margin, the image-only one worse (their cards),
    # so each bundle states its own, chosen on its held-out groups.
    border: int = 0

    @property
    def canvas(self) -> int:
        return self.imgsz + 2 * self.border

    def decision_threshold(self, has_template: bool) -> float:
        if has_template or self.input == "gray" or self.conf_no_template is None:
            return self.conf
        return self.conf_no_template

    @classmethod
    def from_name(cls, name: str) -> DetectorConfig:
        presets = {"yolo11n": cls(arch="yolo11n"), "yolov7-tiny": cls(arch="yolov7-tiny"), "tiny": cls(arch="yolo11n", imgsz=128),
                   "tiny-template": cls(arch="yolo11n", imgsz=128, input="template-diff")}
        if name not in presets:
            raise KeyError(f"unknown detector preset {name!r}; choose from {sorted(presets)}")
        return presets[name]

    def to_dict(self) -> dict:
        return asdict(self)


def model_yaml(arch: str, nc: int = len(DEFECT_CLASSES)) -> dict:
    """The model definition as a dict (what ships next to the weights)."""
    import yaml

    if arch == "yolov7-tiny":
        cfg = yaml.safe_load((CONFIG_DIR / "yolov7-tiny.yaml").read_text())
    elif arch in ("yolo11n", "yolo11s"):
        from core.offline import enforce_offline

        enforce_offline()
        from ultralytics.nn.tasks import yaml_model_load

        cfg = dict(yaml_model_load(f"{arch}.yaml"))
        cfg["scale"] = arch[-1]
        cfg.pop("yaml_file", None)
    else:
        raise KeyError(f"unknown detector architecture {arch!r}; choose from {ARCHITECTURES}")
    cfg["nc"] = nc
    return cfg


def build_model(cfg: dict):
    from core.offline import enforce_offline

    enforce_offline()
    import torch  # noqa: F401  (torch before ultralytics: see stack.md)
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(dict(cfg), ch=3, nc=cfg["nc"], verbose=False)
    model.names = {i: n for i, n in enumerate(DEFECT_CLASSES)}
    return model


def load_detector(bundle_dir: Path):
    """(fused float32 model in eval mode, DetectorConfig, Bundle) from a core bundle.

    The bundle's config.json holds the detector settings and the model YAML; the weights are a
    safetensors state_dict verified against the card's sha256 before loading (nothing unpickled).
    """
    from core.bundle import load_bundle

    refuse_checkpoint(bundle_dir)
    bundle = load_bundle(bundle_dir)
    config = DetectorConfig(**bundle.config["detector"])
    return model_from_state(bundle.config["model_yaml"], bundle.state_dict), config, bundle


def refuse_checkpoint(path: Path) -> None:
    """A BundleError naming the one-time conversion when ``path`` is an ultralytics checkpoint or its run folder:
    serving loads bundles only, because a .pt is a pickle (apps/industrial/checkpoint.py)."""
    from apps.industrial.checkpoint import CHECKPOINT_NAMES
    from core.bundle import WEIGHTS, BundleError

    path = Path(path)
    checkpoint_file = path.is_file() and path.suffix.lower() == ".pt"
    run_folder = path.is_dir() and not (path / WEIGHTS).exists() and any((path / n).is_file() for n in CHECKPOINT_NAMES)
    if checkpoint_file or run_folder:
        raise BundleError(f"{path} is an ultralytics checkpoint, not a detector bundle: the service never unpickles one. "
                          f"Convert it once: `triptych data industrial bundle-detector --weights {path} --out DIR`, "
                          "then point the setting at DIR")


def model_from_state(cfg: dict, state_dict: dict):
    """The fused float32 eval-mode network a bundle's YAML and state_dict describe (what serving runs)."""
    model = build_model(cfg)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"detector weights do not match the YAML: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model = model.float().eval()
    model = model.fuse(verbose=False)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def detector_bundle_config(config: DetectorConfig, cfg: dict) -> dict:
    return {"detector": config.to_dict(), "model_yaml": cfg}


# ------------------------------------------------------------------------------------ inference
@dataclass
class Detection:
    cls: int
    confidence: float
    box_px: tuple[float, float, float, float]  # x1 y1 x2 y2 in the input image's pixels

    def to_dict(self, px_per_mm: float) -> dict:
        x1, y1, x2, y2 = self.box_px
        return {
            "class": DEFECT_CLASSES[self.cls],
            "confidence": round(self.confidence, 4),
            "box_px": [round(v, 1) for v in self.box_px],
            # The defect's size is its box's longer side: what a 0.2 mm spec on a feature means.
            "size_mm": round(max(x2 - x1, y2 - y1) / px_per_mm, 3),
        }


@dataclass
class PreparedImage:
    tensor: np.ndarray  # (3, S, S) float32 in 0..1
    scale: float
    pad: tuple[int, int]
    shape: tuple[int, int]  # original (H, W)
    encoded: np.ndarray | None = None  # (H, W, 3) uint8 channels before letterboxing (crops for reclassify)


def prepare_image(gray: np.ndarray, config: DetectorConfig, template: np.ndarray | None = None,
                  registered: bool = False) -> PreparedImage:
    """Grayscale (H, W) uint8 (+ optional aligned template) -> letterboxed (3, S, S) tensor, pad value 114 as
    ultralytics trains. The channels come from ``encode_input``, the function that also wrote the training data."""
    from PIL import Image

    if config.input == "gray":
        template = None  # a gray-input model never saw a template; it is still used for refutation by the service
    encoded = original = encode_input(gray, template, config.input, bilevel=config.binarize, registered=registered)
    h, w = encoded.shape[:2]
    s = config.imgsz
    scale = min(s / h, s / w)
    nh, nw = round(h * scale), round(w * scale)
    if (nh, nw) != (h, w):
        encoded = np.asarray(Image.fromarray(encoded).resize((nw, nh), Image.BILINEAR))
    canvas = np.full((config.canvas, config.canvas, 3), 114, np.uint8)
    top, left = (s - nh) // 2 + config.border, (s - nw) // 2 + config.border
    canvas[top : top + nh, left : left + nw] = encoded
    tensor = np.empty((3, config.canvas, config.canvas), np.float32)  # one pass, no uint8 -> float32 copy first
    np.divide(canvas.transpose(2, 0, 1), np.float32(255), out=tensor, dtype=np.float32)
    return PreparedImage(tensor, scale, (left, top), (h, w), original)


def _forward(model, x: np.ndarray):
    """Raw head output (B, 4 + nc, anchors) as a torch tensor, from either backend."""
    import torch

    if isinstance(model, OnnxDetector):
        return torch.from_numpy(model(x))
    with torch.inference_mode():
        raw = model(torch.from_numpy(x))
    return raw[0] if isinstance(raw, (list, tuple)) else raw


def _nms(pred, images: list[PreparedImage], config: DetectorConfig, conf: float | None) -> list[list[Detection]]:
    from ultralytics.utils.nms import non_max_suppression

    out = non_max_suppression(
        pred, conf_thres=config.conf if conf is None else conf, iou_thres=config.iou, max_det=config.max_det, nc=len(DEFECT_CLASSES)
    )
    results = []
    for det, im in zip(out, images):
        boxes = det[:, :4].numpy().copy()
        boxes[:, [0, 2]] -= im.pad[0]
        boxes[:, [1, 3]] -= im.pad[1]
        boxes /= im.scale
        h, w = im.shape
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        results.append(
            [Detection(int(c), float(p), tuple(float(v) for v in b)) for b, p, c in zip(boxes, det[:, 4].tolist(), det[:, 5].tolist())]
        )
    return results


def detect(model, images: list[PreparedImage], config: DetectorConfig, conf: float | None = None) -> list[list[Detection]]:
    """Batched forward + NMS; boxes mapped back to each input's pixels."""
    if not images:
        return []
    return _nms(_forward(model, np.stack([im.tensor for im in images])), images, config, conf)


def region_score_tokens(pred, imgsz: int, grid: int = 4, border: int = 0) -> np.ndarray:
    """(B, grid*grid, nc) tokens: per image region, the detector's highest score for each defect class.

    Each anchor's box centre picks its region. These are the detector's own evidence laid out in
    space; unlike pooled neck features they do not encode the board's layout, which differs from
    one board group to the next and made a fusion trained on one group fail on another.
    """
    import torch

    centres = (pred[:, :2, :] - border).clamp(0, imgsz - 1)  # (B, 2, A) box centres in letterboxed-image pixels
    cell = (centres / (imgsz / grid)).long()
    index = (cell[:, 1] * grid + cell[:, 0])[..., None].expand(-1, -1, pred.shape[1] - 4)  # (B, A, nc)
    scores = pred[:, 4:, :].transpose(1, 2).float()  # (B, A, nc)
    out = torch.zeros(pred.shape[0], grid * grid, scores.shape[-1])
    out.scatter_reduce_(1, index, scores, reduce="amax", include_self=True)
    return out.numpy()


def detect_with_tokens(model, images: list[PreparedImage], config: DetectorConfig, grid: int = 4, conf: float | None = None):
    """One forward pass -> (detections per image, region score tokens (B, grid*grid, nc) float32)."""
    if not images:
        return [], np.zeros((0, grid * grid, len(DEFECT_CLASSES)), np.float32)
    pred = _forward(model, np.stack([im.tensor for im in images]))
    return _nms(pred, images, config, conf), region_score_tokens(pred, config.imgsz, grid, config.border)


class OnnxDetector:
    """The fused detector exported to ONNX (its decoded head output), run by onnxruntime.

    On the small CPUs of a line PC onnxruntime runs this ~1.5x faster than eager PyTorch; outputs
    agree to ~1e-3 (tested). The export is cached next to the weights' sha256, so it happens once.
    """

    def __init__(self, path: Path, threads: int = 1, workers: int = 1):
        from core.compression import SessionPool

        self.path = Path(path)
        # ``threads`` CPU threads in all: one session per worker, each on its share (a batch of boards is
        # split across them; see SessionPool for why two 1-thread workers beat one 2-thread session); a lone
        # board runs on one session of all ``threads``
        workers = max(1, min(workers, threads))
        self.pool = SessionPool(path, workers=workers, threads=max(1, threads // workers))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # the first output: exports before session 15 also returned pooled P5 tokens, which nothing reads
        return self.pool.run({"images": np.asarray(x, dtype=np.float32)})[0]  # prepared inputs are float32: no copy


def dfl_expectation(dfl, x):
    """ultralytics' ``DFL.forward`` as the export writes it: each box side's expected bin under the softmax of
    its ``c1`` bins, summed along the bins' own axis. ultralytics transposes the bins to axis 1 and takes a
    softmax there, which onnxruntime runs around two transposes: 12 of the INT8 detector's 123 ms per
    672-px image on one core. Exp and sums over axis 2 cost ~1 ms; boxes agree to ~1e-4 px."""
    b, _, a = x.shape
    x = x.view(b, 4, dfl.c1, a)
    e = (x - x.amax(2, keepdim=True)).exp()
    return (e * dfl.conv.weight.view(1, 1, dfl.c1, 1)).sum(2) / e.sum(2)


def export_detector_onnx(model, config: DetectorConfig, path: Path) -> Path:
    import types

    import torch
    from ultralytics.nn.modules.block import DFL

    from core.compression import export_onnx

    detect_layer = model.model[-1]
    detect_layer.export, detect_layer.format = True, "onnx"  # Detect returns the decoded (B, 4+nc, A) tensor
    dfl = detect_layer.dfl if isinstance(detect_layer.dfl, DFL) else None  # reg_max 1 has no bins to decode
    if dfl is not None:
        dfl.forward = types.MethodType(dfl_expectation, dfl)  # this instance only, for this export
    try:
        export_onnx(model.eval(), (torch.zeros(1, 3, config.canvas, config.canvas),), path, ["images"], ["pred"])
    finally:
        detect_layer.export = False
        if dfl is not None:
            del dfl.forward
    return Path(path)


PRECISIONS = ("fp32", "int8")
INT8_FILE = "detector-int8.onnx"  # shipped inside the detector bundle, its sha256 in card.json extra["int8"]


def _fp32_onnx(model, config: DetectorConfig, bundle, cache_dir: Path | None) -> Path:
    from core.compression import export_once
    from core.offline import state_dir

    # "-dflsum": the box decoding of ``dfl_expectation``; an older cached export (ultralytics' softmax) is not reused
    path = Path(cache_dir or state_dir() / "industrial") / f"detector-{bundle.sha256[:16]}-{config.canvas}-dflsum.onnx"
    return export_once(path, lambda tmp: export_detector_onnx(model, config, tmp))


def verify_int8(bundle) -> Path:
    """Path of the bundle's INT8 model after checking it is there, intact and made from these weights.

    Raises core.bundle.BundleError naming what is wrong and how to rebuild it.
    """
    from core.bundle import BundleError, sha256_file

    rebuild = "rebuild it with `triptych data industrial quantize --deeppcb DIR` or set detector_precision=fp32"
    meta = bundle.card.extra.get("int8")
    path = Path(bundle.path) / INT8_FILE
    if not meta or not meta.get("sha256"):
        raise BundleError(f"detector bundle {bundle.path} has no INT8 model recorded in card.json; {rebuild}")
    if not path.is_file():
        raise BundleError(f"detector bundle {bundle.path}: {INT8_FILE} is missing; {rebuild}")
    actual = sha256_file(path)
    if actual != meta["sha256"]:
        raise BundleError(
            f"detector bundle {bundle.path}: {INT8_FILE} has sha256 {actual[:12]}… but the card records "
            f"{meta['sha256'][:12]}…; the file is corrupt, truncated or was replaced; {rebuild}"
        )
    if meta.get("source_sha256") != bundle.sha256:
        raise BundleError(f"detector bundle {bundle.path}: {INT8_FILE} was quantised from other weights "
                          f"({str(meta.get('source_sha256'))[:12]}…, bundle has {bundle.sha256[:12]}…); {rebuild}")
    from core.compression import full_range_int8_weights, int8_kernels_saturate

    if int8_kernels_saturate() and full_range_int8_weights(path):
        raise BundleError(f"detector bundle {bundle.path}: {INT8_FILE} holds full 8-bit weights, which onnxruntime's INT8 kernels "
                          "on this CPU (x86 without VNNI) saturate: its detections would be wrong; rebuild it (7-bit "
                          "weights) with `triptych data industrial quantize --deeppcb DIR` or set detector_precision=fp32")
    config = DetectorConfig(**bundle.config["detector"])
    side = _onnx_input_side(path)
    if side is not None and side != config.canvas:
        raise BundleError(f"detector bundle {bundle.path}: {INT8_FILE} takes {side} px inputs but the config asks for "
                          f"{config.canvas} (imgsz {config.imgsz} + 2 x border {config.border}); {rebuild}")
    return path


def _onnx_input_side(path: Path) -> int | None:
    """The fixed spatial size of an ONNX model's first input (None when it is dynamic)."""
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    side = dims[-1].dim_value if len(dims) == 4 else 0
    return side or None


def load_onnx_detector(bundle_dir: Path, threads: int = 1, cache_dir: Path | None = None, precision: str = "fp32",
                       workers: int = 1):
    """(OnnxDetector, DetectorConfig, Bundle). fp32 exports the bundle's model on first use (cached);
    int8 runs the bundle's verified, statically quantised model (see ``quantize_detector``). ``workers``
    sessions share the ``threads`` (batches are split across them)."""
    if precision not in PRECISIONS:
        raise ValueError(f"detector precision must be one of {PRECISIONS}, not {precision!r}")
    if precision == "int8":
        from core.bundle import load_bundle

        refuse_checkpoint(bundle_dir)
        bundle = load_bundle(bundle_dir)  # verifies the fp32 weights the INT8 model was made from
        config = DetectorConfig(**bundle.config["detector"])
        return OnnxDetector(verify_int8(bundle), threads, workers), config, bundle
    model, config, bundle = load_detector(bundle_dir)
    return OnnxDetector(_fp32_onnx(model, config, bundle, cache_dir), threads, workers), config, bundle


def float_head_nodes(graph_nodes, detect_index: int) -> list[str]:
    """Nodes that stay float in the INT8 detector: box decoding and the last 1x1 convs of the head.

    The Detect layer's decoding (DFL softmax, anchor offsets, strides) writes boxes in input pixels:
    8 bits over 640 px would be a 2.5 px step. Its final 1x1 convs produce the box-distribution and
    class logits the decision thresholds act on. Anything outside the network's layers stays float too.
    The rest (backbone, neck, head conv stacks) is quantised.
    """
    import re

    keep_float = []
    detect = re.compile(rf"(^|/)model\.{detect_index}/")
    last_conv = re.compile(r"/cv[23]\.\d+/cv[23]\.\d+\.2/Conv$")
    for node in graph_nodes:
        name = node.name
        if detect.search(name):
            in_stack = re.search(r"/cv[23]\.\d+/", name) is not None
            if not in_stack or last_conv.search(name):
                keep_float.append(name)
        elif not re.search(r"(^|/)model\.\d+/", name):
            keep_float.append(name)
    return keep_float


def calibration_images(root: Path, split: str | Path, n: int = 96, seed: int = 0) -> list[Path]:
    """n images of `split` (half tested boards, half defect-free templates, as the line sees both)."""
    return [item[0] for item in calibration_items(root, split, n, seed, "gray")]


def calibration_items(root: Path, split: str | Path, n: int = 96, seed: int = 0, input_mode: str = "gray",
                      exclude_groups=()) -> list[tuple]:
    """n calibration inputs of a TRAINING list as (image path, template path | None, repaired?).

    gray: alternately tested boards and templates. template-diff: in turn a tested board with its
    template, a repaired (defect-free) scan with its template, a tested board alone and a template
    alone, so both request paths (with and without template) set the activation ranges.
    ``exclude_groups``: board groups held out of training (a bundle's ``held_out_groups``) stay out here too.
    """
    from apps.industrial.data import DEEPPCB_VAL_GROUPS, load_deeppcb, select_groups

    samples = select_groups(load_deeppcb(root, split), exclude=tuple(exclude_groups))
    leaked = sorted({s.group for s in samples} & set(DEEPPCB_VAL_GROUPS))
    if leaked:
        raise ValueError(f"calibration list {split} contains validation board groups {leaked}; calibrate on the training list")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(samples))
    items = []
    for k, i in enumerate(order):
        s = samples[i]
        if input_mode == "gray" or s.template is None:
            items.append((s.template if k % 2 and s.template is not None else s.image, None, False))
        else:
            items.append([(s.image, s.template, False), (s.image, s.template, True), (s.image, None, False),
                          (s.template, None, False)][k % 4])
        if len(items) == n:
            break
    return items


def calibration_input(item, config: DetectorConfig) -> np.ndarray:
    """(1, 3, S, S) float32 for one calibration item (prepared as the service prepares requests)."""
    from apps.industrial.data import PcbSample, load_gray, read_deeppcb_boxes, repaired_scan

    if isinstance(item, (str, Path)):
        item = (item, None, False)
    image, template, repaired = item
    if repaired:
        label = Path(image).parent.with_name(Path(image).parent.name + "_not") / (Path(image).name.removesuffix("_test.jpg") + ".txt")
        boxes, classes = read_deeppcb_boxes(label)
        gray = repaired_scan(PcbSample(Path(image), Path(template), boxes, classes))
    else:
        gray = load_gray(image)
    return prepare_image(gray, config, load_gray(template) if template is not None else None).tensor[None]


def update_detector_card(bundle_dir: Path, int8: dict | None = None, metrics: dict | None = None, notes: str | None = None) -> None:
    """Rewrite card.json + MODEL_CARD.md (the safetensors and their sha256 are untouched)."""
    import json

    from core.bundle import CARD_JSON, CARD_MD, ModelCard

    bundle_dir = Path(bundle_dir)
    data = json.loads((bundle_dir / CARD_JSON).read_text())
    if int8 is not None:
        data.setdefault("extra", {})["int8"] = int8
    if metrics:
        data["metrics"].update({k: float(v) for k, v in metrics.items()})
    if notes is not None:
        data["notes"] = notes
    card = ModelCard(**data)
    (bundle_dir / CARD_JSON).write_text(json.dumps(card.__dict__, indent=2) + "\n")
    (bundle_dir / CARD_MD).write_text(card.to_markdown())  # lists extra["int8"]'s file and sha256


def _calibration_name(item) -> str:
    if isinstance(item, (str, Path)):
        item = (item, None, False)
    image, template, repaired = item
    name = f"{Path(image).parent.name}/{Path(image).name}"
    return name + (" repaired" if repaired else "") + (" +template" if template is not None else "")


def quantize_detector(bundle_dir: Path, images: list[Path], method: str = "percentile", cache_dir: Path | None = None,
                      log=print) -> dict:
    """Static INT8 (QDQ, per-channel weights) of the bundle's fp32 ONNX model, calibrated on `images`;
    writes ``detector-int8.onnx`` into the bundle and records its sha256 and recipe in card.json."""
    import time as _time

    import onnx

    from core.bundle import sha256_file
    from core.compression import quantize_onnx_static

    bundle_dir = Path(bundle_dir)
    model, config, bundle = load_detector(bundle_dir)
    fp32 = _fp32_onnx(model, config, bundle, cache_dir)
    exclude = float_head_nodes(onnx.load(str(fp32)).graph.node, len(model.model) - 1)
    feeds = [{"images": calibration_input(item, config)} for item in images]
    start = _time.time()
    out = bundle_dir / INT8_FILE
    tmp = out.with_suffix(".tmp.onnx")
    try:
        quantize_onnx_static(fp32, tmp, feeds, per_channel=True, nodes_to_exclude=exclude, calibrate_method=method)
        tmp.replace(out)  # the shipped file changes only once the new one is complete
    finally:
        tmp.unlink(missing_ok=True)
    meta = {
        "file": INT8_FILE,
        "sha256": sha256_file(out),
        "source_sha256": bundle.sha256,
        "format": "onnx QDQ: uint8 activations, int8 per-channel 7-bit weights (onnxruntime quantize_static, reduce_range)",
        "calibration": (f"{len(images)} DeepPCB training-list inputs ("
                        + ("half tested, half templates" if config.input == "gray" else
                           "in turn tested+template, repaired+template, tested alone, template alone") + f"), {method}"),
        "calibration_images": [_calibration_name(item) for item in images],
        "float_nodes": len(exclude),
        "bytes": out.stat().st_size,
    }
    update_detector_card(bundle_dir, int8=meta)
    log(f"wrote {out} ({meta['bytes'] / 1e6:.1f} MB, {_time.time() - start:.0f} s, {len(exclude)} nodes kept float)")
    return meta


# ----------------------------------------------------------------------------------------- mAP
@dataclass
class DetectionScores:
    map50: float
    map50_95: float
    precision: float
    recall: float
    per_class_ap50: dict = field(default_factory=dict)


def detection_scores(preds: list[list[Detection]], truths: list[tuple[np.ndarray, np.ndarray]]) -> DetectionScores:
    """COCO-style mAP@0.5 and mAP@0.5:0.95 with ultralytics' own matching and AP integration."""
    import torch
    from ultralytics.utils.metrics import ap_per_class, box_iou

    iouv = np.linspace(0.5, 0.95, 10)
    tps, confs, pcls, tcls = [], [], [], []
    for dets, (gt_boxes, gt_cls) in zip(preds, truths):
        tcls.append(gt_cls)
        if not dets:
            continue
        dets = sorted(dets, key=lambda d: -d.confidence)
        pb = torch.tensor([d.box_px for d in dets], dtype=torch.float32)
        pc = np.array([d.cls for d in dets])
        correct = np.zeros((len(dets), len(iouv)), bool)
        if len(gt_cls):
            iou = box_iou(torch.from_numpy(gt_boxes.astype(np.float32)), pb).numpy()
            iou = iou * (gt_cls[:, None] == pc[None, :])
            matched = np.zeros((iou.shape[0], len(iouv)), bool)
            for j in np.flatnonzero((iou >= iouv.min()).any(0)):
                available = np.where(matched, 0, iou[:, j, None])
                k = available.argmax(0)
                correct[j] = available[k, range(len(iouv))] >= iouv
                matched[k, range(len(iouv))] |= correct[j]
        tps.append(correct)
        confs.append(np.array([d.confidence for d in dets]))
        pcls.append(pc)
    target_cls = np.concatenate(tcls) if tcls else np.zeros(0)
    if not tps:
        return DetectionScores(0.0, 0.0, 0.0, 0.0)
    _, _, p, r, _, ap, classes, *_ = ap_per_class(np.concatenate(tps), np.concatenate(confs), np.concatenate(pcls), target_cls)
    per_class = {DEFECT_CLASSES[int(c)]: float(ap[i, 0]) for i, c in enumerate(classes)}
    return DetectionScores(float(ap[:, 0].mean()), float(ap.mean()), float(p.mean()), float(r.mean()), per_class)


# ------------------------------------------------------------------------------------- training
def _patch_ultralytics_for_offline_training() -> None:
    """Two ultralytics behaviours that reach for the network or for polars during training.

    - check_amp downloads yolo26n.pt to compare AMP outputs; offline that can only fail, so we skip it
      (AMP in fp16/bf16 on the GPU is well-trodden for these small convnets).
    - results.csv is re-read with polars; where polars is absent (it is a 54 MB wheel we do not carry
      to the GPU machine), read it with the csv module instead.
    """
    import csv
    import io

    import ultralytics.engine.trainer as trainer_module

    trainer_module.check_amp = lambda *a, **k: True
    try:
        import polars  # noqa: F401
    except ImportError:

        def read_results_csv(self):
            try:
                rows = list(csv.DictReader(io.StringIO(self.csv.read_text())))
            except Exception:
                return {}
            out: dict = {}
            for row in rows:
                for key, value in row.items():
                    try:
                        out.setdefault(key.strip(), []).append(float(value))
                    except (TypeError, ValueError):
                        out.setdefault(key.strip(), []).append(value)
            return out

        trainer_module.BaseTrainer.read_results_csv = read_results_csv


def template_dropout(p: float, mode: str):
    """Patch ultralytics' YOLODataset so that a share `p` of TRAINING samples (after mosaic and the other
    augmentations, per sample and epoch) get the "no template" encoding of ``data.drop_template``:
    one model then serves requests with and without a template. Returns an undo callable."""
    import random

    import torch
    from ultralytics.data.dataset import YOLODataset

    from apps.industrial.data import drop_template

    original = YOLODataset.__getitem__

    def __getitem__(self, index):
        label = original(self, index)
        if self.augment and random.random() < p:
            img = label["img"]  # (3, H, W) uint8, channels in file order (Format turned cv2's BGR back)
            label["img"] = torch.from_numpy(drop_template(img.permute(1, 2, 0).numpy(), mode).transpose(2, 0, 1).copy())
        return label

    YOLODataset.__getitem__ = __getitem__

    def undo():
        YOLODataset.__getitem__ = original

    return undo


def train_detector(
    arch: str,
    data_yaml: Path,
    out_dir: Path,
    epochs: int = 100,
    time_hours: float | None = None,
    batch: int = 32,
    imgsz: int = 640,
    workers: int = 8,
    device: str = "cpu",
    seed: int = 0,
    cache: str | bool = "ram",
    dropout: float = 0.3,
    keep: str = "last",
    fraction: float = 1.0,
    init: Path | None = None,
    exclude_groups: tuple[str, ...] = (),
) -> dict:
    """Train one config with ultralytics; returns metrics and writes weights (safetensors + YAML) to out_dir.

    ``init`` (a detector bundle directory, e.g. a shipped one) warm-starts from its weights instead of
    random initialisation: a continuation run, so a time-bounded GPU session adds epochs to earlier ones.

    The input encoding comes from the data.yaml's ``input`` key (written by ``prepare_ultralytics``);
    ``template-diff`` data trains with template dropout `dropout`. ``keep="last"`` ships the final EMA
    weights (no checkpoint chosen on the validation groups); ``"best"`` ultralytics' best-fitness epoch,
    which is chosen on them. Both are written (model.safetensors = the kept one, model_best /
    model_last.safetensors). ``exclude_groups`` (e.g. ``("group44000", "group77000")``) leaves those
    board groups' training images out (``train_image_list``), so they can calibrate the board decision
    on boards the detector never saw.
    """
    from core.offline import enforce_offline

    enforce_offline()
    import copy

    import torch  # noqa: F401
    from ultralytics import YOLO

    if keep not in ("last", "best"):
        raise ValueError("keep must be last or best")
    _patch_ultralytics_for_offline_training()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = model_yaml(arch)
    import yaml

    yaml_path = out_dir / f"{arch}.yaml"

    yaml_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    # ultralytics resolves a relative `path:` against its own datasets dir; pin it to the yaml's folder.
    data = yaml.safe_load(Path(data_yaml).read_text())
    data["path"] = str(Path(data_yaml).resolve().parent)
    input_mode = data.pop("input", "gray")
    n_train = None
    if exclude_groups:
        listed = train_image_list(Path(data["path"]) / data["train"], exclude_groups, out_dir / "train_images.txt")
        data["train"], n_train = str(listed), len(listed.read_text().split())
    data_path = out_dir / "data.yaml"
    data_path.write_text(yaml.safe_dump(data, sort_keys=False))
    undo = template_dropout(dropout, input_mode) if input_mode == "template-diff" and dropout > 0 else (lambda: None)
    yolo = YOLO(str(yaml_path), task="detect")
    trainer_class = None
    if init is not None:
        from core.bundle import load_bundle

        init_bundle = load_bundle(Path(init))
        if init_bundle.config["model_yaml"] != cfg:
            raise ValueError(f"{init} holds a different architecture than {arch}")
        trainer_class = warm_start_trainer(init_bundle.state_dict)
    final: dict = {}
    yolo.add_callback("on_train_end", lambda trainer: final.update(model=copy.deepcopy(trainer.ema.ema).float().cpu()))
    start = time.time()
    try:
        yolo.train(
            data=str(data_path),
            epochs=epochs,
            time=time_hours,
            imgsz=imgsz,
            batch=batch,
            workers=workers,
            device=device,
            seed=seed,
            cache=cache,
            pretrained=False,
            amp=device != "cpu",
            plots=False,
            project=str(out_dir.resolve()),
            name="run",
            exist_ok=True,
            flipud=0.5,  # PCB defects have no up/down; both flips are label-preserving
            fliplr=0.5,
            scale=0.3,  # tiny defects (pin-holes ~10 px) vanish under strong down-scaling
            hsv_h=0.0,
            hsv_s=0.0,
            close_mosaic=5,
            fraction=fraction,
            verbose=False,
            trainer=trainer_class,
        )
    finally:
        undo()
    seconds = time.time() - start
    trainer = yolo.trainer
    metrics = {k.replace("metrics/", "").replace("(B)", ""): float(v) for k, v in trainer.metrics.items()}
    metrics.update({"train_seconds": seconds, "epochs_run": int(trainer.epoch) + 1, "template_dropout": dropout,
                    "input": input_mode, "kept": keep})
    if n_train is not None:
        metrics.update({"n_train_images": n_train, "excluded_groups": ",".join(exclude_groups)})
    export_weights(yolo.model, cfg, out_dir, name="model_best.safetensors")
    if "model" in final:
        export_weights(final["model"], cfg, out_dir, name="model_last.safetensors")
    kept = out_dir / f"model_{keep if 'model' in final else 'best'}.safetensors"
    (out_dir / "model.safetensors").write_bytes(kept.read_bytes())
    import json

    (out_dir / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, indent=1))
    return metrics


def train_image_list(train_dir: Path, exclude_groups, path: Path) -> Path:
    """Write ``path``: the images of a prepared training folder minus those of ``exclude_groups``
    (absolute paths, one a line; ultralytics finds each label by swapping images/ for labels/)."""
    from apps.industrial.data import group_of_board_file

    images = sorted(Path(train_dir).resolve().glob("*.png"))
    groups = {p: group_of_board_file(p.name) for p in images}
    missing = sorted(set(exclude_groups) - set(groups.values()))
    if missing:
        raise ValueError(f"excluded board groups {missing} have no images in {train_dir}")
    kept = [p for p in images if groups[p] not in exclude_groups]
    if not kept:
        raise ValueError(f"excluding {list(exclude_groups)} leaves no training images in {train_dir}")
    Path(path).write_text("".join(f"{p}\n" for p in kept))
    return Path(path)


def warm_start_trainer(state_dict: dict):
    """An ultralytics DetectionTrainer whose fresh model is loaded with `state_dict` (no pickle involved)."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    class WarmStartTrainer(DetectionTrainer):
        def get_model(self, cfg=None, weights=None, verbose=True):
            model = super().get_model(cfg=cfg, weights=weights, verbose=verbose)
            state = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
            model.load_state_dict(state, strict=True)
            return model

    return WarmStartTrainer


def export_weights(model, cfg: dict, out_dir: Path, half: bool = True, name: str = "model.safetensors") -> Path:
    """model.safetensors (fp16 state_dict) + model.yaml: no pickles in what ships."""
    import yaml
    from safetensors.torch import save_file

    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous().cpu() for k, v in model.state_dict().items()}
    out_dir = Path(out_dir)
    save_file(state, str(out_dir / name))
    (out_dir / "model.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out_dir / name
