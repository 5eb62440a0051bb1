"""Second look at each detected defect: a small CNN reads a crop of the board around the box and names
its class.

Why: the detector finds most DeepPCB defects at the right place but confuses siblings: copper / spur /
short (copper that should not be there) and open / mousebite / pin-hole (copper missing). Whether a
blob of extra copper bridges two tracks (short), sticks out of one (spur) or stands alone (copper) is a
question of local topology, which a crop at full resolution shows better than the detector's stride-8
features of the whole board. The crop has the detector's own three channels (tested image, registered
template, |difference|).

Only the class changes: the box and its confidence stay the detector's, so board decisions and
thresholds are untouched (a box that ends up repeating a stronger box of its new class is dropped, as the
detector's NMS would have done). It needs the template (without one, template := test and difference := 0,
its classes are far worse than the detector's own: card), so the service applies it to boards sent with a
template, the template detector's path; boards without one keep the image-only detector's classes.

Training (``triptych data industrial crops`` then ``triptych train industrial --part defect-classifier``):
every annotated defect of the template detector's training groups, once as annotated and three times with
its box jittered as a detector's boxes are, in all 8 orientations. The variant and the relabelling rule
were chosen on the detector's held-out calibration groups (card).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from core.config import ConfigBase


@dataclass
class CropClassifierConfig(ConfigBase):
    size: int = 56  # crop side in pixels after resizing (the shipped one's, chosen on calibration groups)
    context: float = 0.5  # extra box side added on each side, as a share of the box's longer side
    min_side: int = 32  # crops never cover less of the board than this (small pin-holes need context)
    widths: tuple[int, ...] = (16, 32, 64, 128)
    classes: int = 6
    dropout: float = 0.2

    PRESETS = {"default": {}, "tiny": {"size": 16, "widths": (4, 8), "min_side": 8}}


def crop_box(encoded: np.ndarray, box, config: CropClassifierConfig) -> np.ndarray:
    """(size, size, 3) uint8: the square around ``box`` (x1 y1 x2 y2, pixels) with context, zero outside
    the image, resized. ``encoded`` is the detector input (H, W, 3) before letterboxing."""
    from PIL import Image

    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(max(x2 - x1, y2 - y1) * (1 + 2 * config.context), config.min_side)
    n = max(1, round(side))
    left, top = round((x1 + x2) / 2 - n / 2), round((y1 + y2) / 2 - n / 2)
    h, w = encoded.shape[:2]
    canvas = np.zeros((n, n, encoded.shape[2]), np.uint8)
    xa, ya, xb, yb = max(left, 0), max(top, 0), min(left + n, w), min(top + n, h)
    if xb > xa and yb > ya:
        canvas[ya - top : yb - top, xa - left : xb - left] = encoded[ya:yb, xa:xb]
    return np.asarray(Image.fromarray(canvas).resize((config.size, config.size), Image.BILINEAR))


def jittered_box(box, scale: float, rng: np.random.Generator) -> np.ndarray:
    """``box`` moved and resized by Gaussian noise of ``scale`` times its sides, as a detector's boxes are."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2 + rng.normal(0, scale * w), (y1 + y2) / 2 + rng.normal(0, scale * h)
    w, h = w * math.exp(rng.normal(0, scale)), h * math.exp(rng.normal(0, scale))
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float32)


class DefectCropClassifier(nn.Module):
    """Plain CNN: per stage two 3x3 conv + batch norm + ReLU, 2x2 max pool between stages, global
    average pool, dropout, linear. Input (B, 3, size, size) in 0..1."""

    def __init__(self, config: CropClassifierConfig | None = None):
        super().__init__()
        self.config = c = config or CropClassifierConfig()
        layers, cin = [], 3
        for i, width in enumerate(c.widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            for _ in range(2):
                layers += [
                    nn.Conv2d(cin, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                cin = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(cin, c.classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def to_tensor(crops: np.ndarray) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float32 in 0..1."""
    return torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255.0


def no_template_view(x):
    """What a board without a template looks like in the three channels: (test, test, 0). ``x``: crops
    (N, 3, S, S) tensor, or one encoded (H, W, 3) uint8 image (whatever its channels 1-2 held)."""
    if isinstance(x, np.ndarray):
        return np.stack([x[..., 0], x[..., 0], np.zeros_like(x[..., 0])], axis=-1)
    return torch.stack([x[:, 0], x[:, 0], torch.zeros_like(x[:, 0])], dim=1)


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 rotations / mirrors of square crops: a defect's class does not depend on orientation."""
    x = torch.rot90(x, k % 4, dims=(2, 3))
    return x.flip(3) if k >= 4 else x


@dataclass
class CropTrainConfig(ConfigBase):
    epochs: int = 30
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    # Share of training crops shown as a board without a template reads (template := test, difference := 0),
    # so one classifier also serves the image-only path.
    template_dropout: float = 0.0
    seed: int = 0


def train_crop_classifier(
    crops: np.ndarray,
    labels: np.ndarray,
    config: CropClassifierConfig,
    train: CropTrainConfig,
    device: str = "cpu",
    log=print,
) -> DefectCropClassifier:
    """Plain loop: AdamW + one-cycle cosine, a random dihedral transform per batch, class-balanced CE."""
    torch.manual_seed(train.seed)
    rng = np.random.default_rng(train.seed)
    model = DefectCropClassifier(config).to(device)
    x, y = to_tensor(crops).to(device), torch.as_tensor(labels, dtype=torch.long, device=device)
    counts = torch.bincount(y, minlength=config.classes).float()
    weight = counts.sum() / (counts.clamp(min=1) * config.classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    steps = train.epochs * math.ceil(len(y) / train.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=train.lr, total_steps=steps, pct_start=0.15
    )
    for epoch in range(train.epochs):
        model.train()
        order = torch.from_numpy(rng.permutation(len(y))).to(device)
        total = 0.0
        for start in range(0, len(y), train.batch_size):
            idx = order[start : start + train.batch_size]
            batch = dihedral(x[idx], int(rng.integers(8)))
            if train.template_dropout > 0:
                drop = torch.from_numpy(rng.random(len(idx)) < train.template_dropout).to(device)
                batch = torch.where(drop[:, None, None, None], no_template_view(batch), batch)
            loss = F.cross_entropy(model(batch), y[idx], weight=weight, label_smoothing=train.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
        if log and (epoch + 1) % 5 == 0:
            log(f"crop classifier epoch {epoch + 1}/{train.epochs}: loss {total / len(y):.4f}")
    return model.eval()


@torch.no_grad()
def crop_probabilities(model: DefectCropClassifier, crops: np.ndarray) -> np.ndarray:
    """(N, classes) softmax over the crops."""
    if len(crops) == 0:
        return np.zeros((0, model.config.classes), np.float32)
    return F.softmax(model(to_tensor(crops)), 1).numpy().astype(np.float32)


# ------------------------------------------------------------------------------------- training data
def defect_crops(
    samples, config: CropClassifierConfig, jitters: int = 3, scale: float = 0.12, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size, 3) uint8 crops and (N,) classes of every annotated defect of DeepPCB ``samples``:
    the annotated box, then ``jitters`` copies with the box moved / resized by ``scale``. Each board is
    encoded with its registered template, as the detector reads it (``data.encode_input``)."""
    from apps.industrial.data import encode_input, load_gray

    rng = np.random.default_rng(seed)
    crops, labels = [], []
    for sample in samples:
        encoded = encode_input(load_gray(sample.image), load_gray(sample.template))
        for box, cls in zip(sample.boxes, sample.classes):
            for k in range(1 + jitters):
                crops.append(crop_box(encoded, box if k == 0 else jittered_box(box, scale, rng), config))
                labels.append(int(cls))
    if not crops:
        return np.zeros((0, config.size, config.size, 3), np.uint8), np.zeros(0, np.int64)
    return np.stack(crops), np.asarray(labels, np.int64)


# ------------------------------------------------------------------------------------- relabelling
@dataclass
class RelabelConfig(ConfigBase):
    min_confidence: float = 0.1  # boxes below keep the detector's class (they hardly move mAP; crops cost)
    detector_class_bonus: float = 0.5  # added to the log-probability of the class the detector gave


class DefectReclassifier:
    """Crop classifier (torch module or onnxruntime session) + the relabelling rule."""

    def __init__(self, model: DefectCropClassifier, relabel: RelabelConfig | None = None, session=None):
        self.model = model.eval()
        self.config = model.config
        self.relabel_config = relabel or RelabelConfig()
        self.session = session
        self.version, self.sha256 = "untrained", ""

    def warm_up(self) -> None:
        """One blank crop through the classifier, and the import of the NMS that ``relabel`` runs (torchvision
        pulls in torch._dynamo: ~3 s on two cores): one-off costs of the first board, paid at load time."""
        from torchvision.ops import batched_nms  # noqa: F401

        self.probabilities(np.zeros((1, self.config.size, self.config.size, 3), np.uint8))

    def probabilities(self, crops: np.ndarray) -> np.ndarray:
        if self.session is None or len(crops) == 0:
            return crop_probabilities(self.model, crops)
        logits = self.session.run(None, {"crops": to_tensor(crops).numpy()})[0]
        logits = logits - logits.max(1, keepdims=True)
        e = np.exp(logits)
        return (e / e.sum(1, keepdims=True)).astype(np.float32)

    def relabel(self, detections: list, encoded: np.ndarray, nms_iou: float | None = None) -> list:
        """The detections of one board (``detector.Detection``) with the classes the crops support; boxes,
        confidences and order unchanged. ``encoded``: the detector input before letterboxing.

        The detector's NMS is per class, so two boxes on one defect can survive with two classes; once
        both carry the same class, the lower-confidence one is dropped when their IoU exceeds ``nms_iou``
        (pass the detector's own NMS IoU: the suppression it would have applied had it named them alike)."""
        return self.relabel_many([detections], [encoded], nms_iou)[0]

    def relabel_many(self, detections: list[list], encoded: list[np.ndarray], nms_iou: float | None = None) -> list[list]:
        """``relabel`` for the images of one detector call: their crops go through the classifier in one
        batch (one onnxruntime call per call of the detector instead of one per image)."""
        from dataclasses import replace

        rule = self.relabel_config
        chosen = [(k, i) for k, dets in enumerate(detections) for i, d in enumerate(dets) if d.confidence >= rule.min_confidence]
        out = [list(dets) for dets in detections]
        if not chosen:
            return out
        probs = self.probabilities(
            np.stack([crop_box(encoded[k], detections[k][i].box_px, self.config) for k, i in chosen])
        )
        for (k, i), p in zip(chosen, probs):
            score = np.log(p + 1e-6)
            score[detections[k][i].cls] += rule.detector_class_bonus
            out[k][i] = replace(detections[k][i], cls=int(score.argmax()))
        if nms_iou is None:
            return out
        from torchvision.ops import batched_nms  # the per-class NMS the detector's own uses

        relabelled = sorted({k for k, _ in chosen})
        for k in relabelled:
            boxes = torch.tensor([d.box_px for d in out[k]], dtype=torch.float32)
            scores = torch.tensor([d.confidence for d in out[k]], dtype=torch.float32)
            kept = batched_nms(boxes, scores, torch.tensor([d.cls for d in out[k]]), nms_iou)
            out[k] = [out[k][i] for i in sorted(kept.tolist())]
        return out


def reclassifier_config(model: DefectCropClassifier, relabel: RelabelConfig) -> dict:
    return {"classifier": model.config.to_dict(), "relabel": relabel.to_dict()}


def train_reclassifier_bundle(
    crops_npz,
    out,
    train: CropTrainConfig | None = None,
    widths: tuple[int, ...] | None = None,
    relabel: RelabelConfig | None = None,
    device: str = "cpu",
    log=print,
) -> dict:
    """Train on a crops file (``triptych data industrial crops``) and write the bundle to ``out``."""
    import json
    from datetime import date
    from pathlib import Path

    from core.bundle import ModelCard, save_bundle

    train = train or CropTrainConfig()
    with np.load(crops_npz, allow_pickle=False) as z:
        crops, labels = z["x"], z["y"]
        config = CropClassifierConfig.from_dict(json.loads(str(z["config"])))
        groups = [str(g) for g in z["groups"]]
    if widths:
        config.widths = tuple(widths)
    relabel = relabel or RelabelConfig()
    model = train_crop_classifier(crops, labels, config, train, device=device, log=log)
    model = model.cpu().eval()
    with torch.no_grad():  # fit on its own training crops: a sanity figure, not a validation
        train_acc = float((crop_probabilities(model, crops[::4]).argmax(1) == labels[::4]).mean())
        blind = no_template_view(crops[::4]) if train.template_dropout > 0 else None
        blind_acc = (
            float((crop_probabilities(model, blind).argmax(1) == labels[::4]).mean())
            if blind is not None
            else None
        )
    card = ModelCard(
        name="industrial-defect-classifier",
        version=date.today().strftime("%Y%m%d"),
        task="class of each defect the template-aware PCB detector finds, from a crop of (tested image, "
        "registered template, |difference|) around its box; relabels the detector's boxes "
        "(apps/industrial/reclassify.py)",
        data=[
            "DeepPCB (Tang et al. 2019, research use): every annotated defect of board groups "
            + ", ".join(groups)
            + f" ({len(labels)} crops: each defect as annotated + jittered copies)"
        ],
        split=f"board groups: trained on {', '.join(groups)} (the crops file's groups; `triptych data industrial "
        "crops` reads apps/industrial/splits/deeppcb_train.txt by default, which holds no validation group); "
        "scored on boards of other groups (metrics)",
        metrics={
            "train_crops": float(len(labels)),
            "train_accuracy_annotated_boxes": train_acc,
            **({"train_accuracy_annotated_boxes_no_template": blind_acc} if blind_acc is not None else {}),
        },
        reproduce=(
            f"triptych data industrial crops --deeppcb ../shared/data/deeppcb --out crops.npz --size {config.size}\n"
            f"triptych train industrial --part defect-classifier --crops crops.npz --device cuda --seed {train.seed} "
            f"--crop-epochs {train.epochs} --widths {','.join(map(str, config.widths))} --out {out}"
        ),
        limitations=[
            "Trained on binarised DeepPCB scans with templates; other boards, imaging or defect types need "
            "retraining.",
            "Applied only to boards sent with a template (the encoding it was trained on).",
        ],
    )
    save_bundle(Path(out), model, reclassifier_config(model, relabel), card)
    return dict(card.metrics)


def load_reclassifier(
    bundle_dir, threads: int = 1, backend: str = "onnx", cache_dir=None
) -> DefectReclassifier:
    """The bundle's classifier; ``onnx`` runs it through onnxruntime (~5x faster than eager torch on a
    few crops), exported once per weights' sha256 into the state directory."""
    from pathlib import Path

    from core.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    model = DefectCropClassifier(CropClassifierConfig.from_dict(bundle.config["classifier"]))
    model.load_state_dict(bundle.state_dict)
    relabel = RelabelConfig.from_dict(bundle.config.get("relabel", {}))
    session = None
    if backend == "onnx":
        from core.compression import export_once, export_onnx, onnx_session
        from core.offline import state_dir

        size = model.config.size
        path = export_once(
            Path(cache_dir or state_dir() / "industrial") / f"defect-classifier-{bundle.sha256[:16]}.onnx",
            lambda tmp: export_onnx(
                model.eval(), (torch.zeros(2, 3, size, size),), tmp, ("crops",), ("logits",)
            ),
        )
        session = onnx_session(path, threads=threads)
    elif backend != "torch":
        raise ValueError(f"backend must be onnx or torch, not {backend!r}")
    reclassifier = DefectReclassifier(model, relabel, session)
    reclassifier.version, reclassifier.sha256 = bundle.card.version, bundle.sha256
    return reclassifier
