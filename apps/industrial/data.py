"""Loaders for the two public datasets in their ORIGINAL layout, and DeepPCB -> ultralytics conversion.

DeepPCB (``DIR/PCBData/<group>/<id>/<n>_test.jpg``, ``_temp.jpg``, boxes ``x1 y1 x2 y2 type`` in
``<id>_not/<n>.txt``, list files with lines ``<group>/<id>/<n>.jpg <group>/<id>_not/<n>.txt``).

CWRU as re-packaged npz (``*.npz`` with keys DE/FE/BA; label, load and sample rate in the file name:
``1797_IR_14_DE12.npz`` = 1797 rpm, inner race, 14 mil, drive end at 12 kHz; ``1797_IR_7_FE.npz`` = a
fan-end bearing fault, always 12 kHz; ``1797_Normal.npz`` is the 48 kHz normal baseline).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFECT_CLASSES = ("open", "short", "mousebite", "spur", "copper", "pin-hole")  # DeepPCB types 1..6
FAULT_CLASSES = ("normal", "ball", "inner_race", "outer_race")
_FAULT_CODE = {"Normal": 0, "B": 1, "IR": 2, "OR": 3}

# Groups held out for validation: whole board groups (never tiles of a board on both sides).
DEEPPCB_VAL_GROUPS = ("group13000", "group50600")


# --------------------------------------------------------------------------------------- DeepPCB
@dataclass
class PcbSample:
    image: Path  # the tested image (<n>_test.jpg)
    template: Path | None  # the defect-free template (<n>_temp.jpg), when present
    boxes: np.ndarray  # (N, 4) float32 x1 y1 x2 y2 in pixels
    classes: np.ndarray  # (N,) int64 in 0..5
    group: str = ""
    stem: str = ""


def read_deeppcb_boxes(path: Path) -> tuple[np.ndarray, np.ndarray]:
    boxes, classes = [], []
    for line in Path(path).read_text().replace(",", " ").splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        x1, y1, x2, y2, kind = (int(float(p)) for p in parts[:5])
        if not 1 <= kind <= len(DEFECT_CLASSES):
            raise ValueError(f"{path}: defect type {kind} outside 1..{len(DEFECT_CLASSES)}")
        boxes.append((min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)))
        classes.append(kind - 1)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64)


SPLIT_LINE_FORMAT = ("each line names a board image and its annotations inside PCBData/, as DeepPCB's test.txt: "
                     "'group20085/20085/20085000.jpg group20085/20085_not/20085000.txt'")


def resolve_split(root: Path, split: str | Path) -> Path:
    """A list file given absolute, relative to the cwd, or by name inside ``DIR/PCBData``."""
    candidates = [Path(split), Path(root) / "PCBData" / str(split), Path(root) / str(split)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"split list {split!r} not found (looked at {', '.join(map(str, candidates))})")


def default_eval_split(root: Path) -> str:
    """The list an evaluation reads when none is named: DeepPCB's own held-out ``test.txt`` where the folder
    has it (the published split, which no shipped model trained on), else ``trainval.txt``."""
    return "test.txt" if (Path(root) / "PCBData" / "test.txt").is_file() else "trainval.txt"


def load_deeppcb(root: Path, split: str | Path = "trainval.txt") -> list[PcbSample]:
    root = Path(root)
    pcb = root / "PCBData"
    if not pcb.is_dir():
        raise FileNotFoundError(f"{root} has no PCBData/ folder (expected DeepPCB's own layout)")
    samples = []
    split_path = resolve_split(root, split)
    try:
        lines = split_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"split list {split_path} is not text; {SPLIT_LINE_FORMAT}") from None
    for number, line in enumerate(lines, start=1):
        parts = line.split()
        if len(parts) < 2:
            continue
        image_rel, label_rel = parts[0], parts[1]
        if not (image_rel.endswith(".jpg") and label_rel.endswith(".txt")):
            raise ValueError(f"split list {split_path}, line {number} is not a DeepPCB pair ({line.strip()[:60]!r}); "
                             f"{SPLIT_LINE_FORMAT}")
        stem = image_rel.removesuffix(".jpg")
        image = pcb / f"{stem}_test.jpg"
        template = pcb / f"{stem}_temp.jpg"
        boxes, classes = read_deeppcb_boxes(pcb / label_rel)
        samples.append(
            PcbSample(
                image=image,
                template=template if template.exists() else None,
                boxes=boxes,
                classes=classes,
                group=image_rel.split("/")[0],
                stem=Path(stem).name,
            )
        )
    return samples


def split_by_group(samples: list[PcbSample], val_groups=DEEPPCB_VAL_GROUPS) -> tuple[list, list]:
    train = [s for s in samples if s.group not in val_groups]
    val = [s for s in samples if s.group in val_groups]
    return train, val


def parse_groups(text: str | None) -> tuple[str, ...]:
    """``"group44000,77000"`` -> ``("group44000", "group77000")`` (the ``group`` prefix is optional)."""
    if not text:
        return ()
    groups = tuple(g if g.startswith("group") else f"group{g}" for g in (p.strip() for p in text.split(",")) if g)
    bad = [g for g in groups if not g.removeprefix("group").isdigit()]
    if bad:
        raise ValueError(f"board groups look like group44000 (DeepPCB's folder names), not {bad}")
    return groups


def select_groups(samples: list[PcbSample], include=(), exclude=()) -> list[PcbSample]:
    """The samples of board groups ``include`` (all when empty) minus those of ``exclude``.

    A named group that the list does not contain is an error: a typo would otherwise silently
    calibrate on, or train with, the wrong boards."""
    present = {s.group for s in samples}
    missing = sorted(set(include) - present) + sorted(set(exclude) - present)
    if missing:
        raise ValueError(f"board groups {missing} are not in this list (it has {sorted(present)})")
    return [s for s in samples if (not include or s.group in include) and s.group not in exclude]


def group_of_board_file(name: str) -> str:
    """The DeepPCB board group of a prepared image (``44000123.png``, ``44000123_temp.png`` -> ``group44000``).

    DeepPCB names every board ``<group digits><3-digit index>`` inside ``group<digits>/<digits>/``, and
    ``prepare_ultralytics`` keeps that stem, so the group is the stem without its last 3 digits."""
    stem = Path(name).stem.removesuffix("_temp")
    if not stem.isdigit() or len(stem) < 4:
        raise ValueError(f"{name!r} is not a DeepPCB board file name (<group digits><3 digits>.png)")
    return f"group{stem[:-3]}"


def write_split_list(samples: list[PcbSample], root: Path, path: Path) -> None:
    pcb = Path(root) / "PCBData"
    lines = []
    for s in samples:
        image_rel = s.image.relative_to(pcb).as_posix().replace("_test.jpg", ".jpg")
        label_rel = f"{s.group}/{s.image.parent.name}_not/{s.stem}.txt"
        lines.append(f"{image_rel} {label_rel}")
    Path(path).write_text("\n".join(lines) + "\n")


def binarize(gray: np.ndarray, threshold: int = 128) -> np.ndarray:
    """DeepPCB scans are binarised by their authors; JPEG adds ringing that thresholding removes.
    (0 / 255 uint8 as the mask's bytes times 255: 0.1 ms at 640 px against 2.6 for ``np.where``.)"""
    return (np.asarray(gray) >= threshold).view(np.uint8) * np.uint8(255)


INPUT_MODES = ("gray", "template-diff")


def register_template(test: np.ndarray, template: np.ndarray, max_shift: int = 4,
                      stride: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """The template moved by the whole-pixel shift (|dy|, |dx| <= ``max_shift``) that best matches ``test``.

    DeepPCB calls its pairs registered, but about a quarter of the trainval pairs match better 1-4 px
    off (mismatched pixels drop by up to a third), and every misregistered edge becomes a thin line
    in the difference channel that reads like an open or a short. The search scores every shift by the
    summed |test - template| over a ``stride``-subsampled interior; the first shift (row-major from
    (-k, -k)) that beats no shift wins, so a registered pair is left as it is. Rows / columns uncovered by
    the shift keep the template's own pixels.
    The default stride keeps about 320 samples a side (2 up to 960 px), so a 4096 px board costs what a
    640 px one does (it took 0.7-1.2 s at stride 2 on one thread, half of such a board's inspection):
    each sample still compares whole-pixel shifts, and 100,000 of them separate one pixel of shift.
    Bilevel pairs (0 / 255, as every binarised scan is) are compared as packed bits, where the sum is
    255 x the count of differing pixels: the same choice in ~3 instead of ~14 ms at 640 px.
    """
    if template.shape != test.shape:
        raise ValueError(f"template is {template.shape[1]}x{template.shape[0]} px but the image is "
                         f"{test.shape[1]}x{test.shape[0]}; they must be aligned and equal in size")
    k = max_shift
    h, w = test.shape
    stride = stride or max(2, min(h, w) // 320)
    if k <= 0 or h <= 2 * k + stride or w <= 2 * k + stride:
        return template, (0, 0)
    core = test[k:h - k:stride, k:w - k:stride]
    score = _bit_mismatches if _bilevel(core) and _bilevel(template) else _absolute_differences
    mismatch = score(core, template, k, stride)
    low = min(mismatch.values())
    dy, dx = (0, 0) if mismatch[(0, 0)] == low else next(
        (sy, sx) for sy in range(-k, k + 1) for sx in range(-k, k + 1) if mismatch[(sy, sx)] == low)
    return shift_image(template, dy, dx), (dy, dx)


def _bilevel(image: np.ndarray) -> bool:
    return not np.any((image != 0) & (image != 255))


def _absolute_differences(core: np.ndarray, template: np.ndarray, k: int, stride: int) -> dict:
    """Per shift (sy, sx): the summed |core - template moved by it| (integers, so ties are exact)."""
    h, w = template.shape
    core = core.astype(np.int32)
    return {(sy, sx): int(np.abs(core - template[k - sy:h - k - sy:stride, k - sx:w - k - sx:stride]).sum())
            for sy in range(-k, k + 1) for sx in range(-k, k + 1)}


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def _bit_mismatches(core: np.ndarray, template: np.ndarray, k: int, stride: int) -> dict:
    """``_absolute_differences`` / 255 for bilevel images: rows packed 8 pixels a byte, XOR, popcount. The
    template is packed once per column shift; a row shift is then a slice of the packed rows."""
    ny, nx = core.shape
    core_bits = np.packbits(core != 0, axis=1)
    popcount = getattr(np, "bitwise_count", None)  # numpy >= 2.0; a table lookup before
    out = {}
    for sx in range(-k, k + 1):
        x0 = k - sx
        columns = np.packbits(template[:, x0:x0 + nx * stride:stride][:, :nx] != 0, axis=1)
        for sy in range(-k, k + 1):
            y0 = k - sy
            differ = core_bits ^ columns[y0:y0 + ny * stride:stride][:ny]
            out[(sy, sx)] = int(popcount(differ).sum() if popcount is not None else _POPCOUNT[differ].sum())
    return out


def shift_image(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``image`` moved by (dy, dx) whole pixels; the uncovered border keeps the original pixels."""
    if dy == 0 and dx == 0:
        return image
    h, w = image.shape[:2]
    out = image.copy()
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = image[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def align_template(test: np.ndarray, template: np.ndarray) -> np.ndarray:
    """The (gray) template moved onto the (gray) scan by the shift ``register_template`` finds between
    their binarised versions, the shift ``encode_input`` applies."""
    _, (dy, dx) = register_template(binarize(test), binarize(template))
    return shift_image(template, dy, dx)


def encode_input(test: np.ndarray, template: np.ndarray | None = None, mode: str = "template-diff",
                 bilevel: bool = True, registered: bool = False) -> np.ndarray:
    """The detector's 3-channel input (H, W, 3) uint8: ONE function for training data, evaluation and serving.

    ``gray``: the tested image in all three channels (the original detector). ``template-diff``:
    channel 0 = tested image, 1 = the defect-free template registered to it (``register_template``),
    2 = |test - template|. Without a
    template the same model gets the "no template" encoding (template := test, difference := 0), which
    it also saw in training (template dropout), so the endpoint works with or without one. The
    difference is left sharp: once registered, a dilated difference would only widen the 1-px edge
    noise of the binarised scans into blobs the size of a pin-hole.
    """
    if mode not in INPUT_MODES:
        raise ValueError(f"detector input must be one of {INPUT_MODES}, not {mode!r}")
    if test.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {test.shape}")
    if bilevel:
        test = binarize(test)
    test = test.astype(np.uint8, copy=False)
    if mode == "gray":
        return np.repeat(test[..., None], 3, axis=-1)
    if template is None:
        return np.stack([test, test, np.zeros_like(test)], axis=-1)
    if template.shape != test.shape:
        raise ValueError(f"template is {template.shape[1]}x{template.shape[0]} px but the image is "
                         f"{test.shape[1]}x{test.shape[0]}; they must be aligned and equal in size")
    if bilevel:
        template = binarize(template)
    template = template.astype(np.uint8, copy=False)
    if not registered:  # a caller that already aligned it (``align_template``) saves the search
        template, _ = register_template(test, template)
    diff = np.abs(test.astype(np.int16) - template.astype(np.int16)).astype(np.uint8)
    return np.stack([test, template, diff], axis=-1)


def drop_template(encoded: np.ndarray, mode: str = "template-diff") -> np.ndarray:
    """The "no template" version of an encoded (H, W, 3) input: what a request without a template sees."""
    return encode_input(np.ascontiguousarray(encoded[..., 0]), None, mode, bilevel=False)


def repaired_scan(sample: PcbSample, margin: int = 2) -> np.ndarray:
    """A defect-free tested scan: the tested image with every annotated box (+margin) copied from the template.

    Outside the boxes it keeps the real scan-vs-template differences (binarisation edges, residual
    misregistration); a template compared with itself would have none and make false alarms trivially rare.
    The patches come from the template registered to the scan (``register_template``): copied from
    a template a few pixels off, they would leave seams that look like opens and shorts.
    """
    if sample.template is None:
        raise ValueError(f"{sample.image} has no template")
    test = load_gray(sample.image).copy()
    template = align_template(test, load_gray(sample.template))
    h, w = test.shape
    for x1, y1, x2, y2 in sample.boxes.astype(int):
        ys, xs = slice(max(y1 - margin, 0), min(y2 + margin, h)), slice(max(x1 - margin, 0), min(x2 + margin, w))
        test[ys, xs] = template[ys, xs]
    return test


def load_gray(path_or_bytes) -> np.ndarray:
    import io

    from PIL import Image, UnidentifiedImageError

    if isinstance(path_or_bytes, (bytes, bytearray)):
        image = Image.open(io.BytesIO(path_or_bytes))
    else:
        try:
            image = Image.open(path_or_bytes)
        except UnidentifiedImageError as exc:  # PIL's message does not say an image was expected
            raise ValueError(f"{path_or_bytes} is not an image PIL can read (expected a JPEG or PNG scan)") from exc
    return np.asarray(image.convert("L"))


def prepare_ultralytics(
    root: Path,
    out: Path,
    split: str = "trainval.txt",
    val_groups=DEEPPCB_VAL_GROUPS,
    bilevel: bool = True,
    templates_as_background: bool = True,
    input_mode: str = "gray",
) -> dict:
    """Write an ultralytics dataset (images/, labels/, data.yaml) from DeepPCB's own layout.

    ``gray`` input: 1-bit PNG (DeepPCB is binarised: ~2.5 kB a tile instead of ~18 kB JPEG) or 8-bit
    grayscale PNG; training templates go in as label-less background images (what a defect-free board
    looks like, which the board false-alarm rate measures). ``template-diff`` input: ``encode_input``
    of each tested image with its template, as an 8-colour palette PNG (bilevel channels); the
    background images are ``repaired_scan`` boards (defects replaced from the template) encoded with
    the template, so defect-free examples keep the real scan-vs-template noise. Template dropout
    (the "no template" encoding) is applied at training time (``train_detector``), per sample and epoch.
    """
    from PIL import Image

    if input_mode not in INPUT_MODES:
        raise ValueError(f"input mode must be one of {INPUT_MODES}, not {input_mode!r}")
    if input_mode == "template-diff" and not bilevel:
        raise ValueError("template-diff input is stored bilevel (the scans are binarised); drop --grayscale")
    out = Path(out)
    samples = load_deeppcb(root, split)
    train, val = split_by_group(samples, val_groups)
    counts = {"train": 0, "train_background": 0, "val": 0}
    for side, subset in (("train", train), ("val", val)):
        (out / "images" / side).mkdir(parents=True, exist_ok=True)
        (out / "labels" / side).mkdir(parents=True, exist_ok=True)
        for s in subset:
            pairs = [(s.image, f"{s.stem}", True)]
            if side == "train" and templates_as_background and s.template is not None:
                pairs.append((s.template, f"{s.stem}_temp", False))
            for src, name, labelled in pairs:
                if input_mode == "template-diff":
                    template = load_gray(s.template) if s.template is not None else None
                    test = load_gray(src) if labelled else repaired_scan(s)
                    _save_palette_png(encode_input(test, template, input_mode), out / "images" / side / f"{name}.png")
                    gray = test
                else:
                    gray = load_gray(src)
                    if bilevel:
                        Image.fromarray(binarize(gray)).convert("1").save(out / "images" / side / f"{name}.png", optimize=True)
                    else:
                        Image.fromarray(gray).save(out / "images" / side / f"{name}.png", optimize=True)
                if labelled:
                    h, w = gray.shape
                    rows = []
                    for (x1, y1, x2, y2), c in zip(s.boxes, s.classes):
                        rows.append(
                            f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"
                        )
                    (out / "labels" / side / f"{name}.txt").write_text("\n".join(rows) + "\n")
                    counts[side] += 1
                else:
                    counts["train_background"] += 1
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(DEFECT_CLASSES))
    (out / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\ninput: {input_mode}\nnames:\n{names}\n")
    return counts


def _save_palette_png(rgb: np.ndarray, path: Path) -> None:
    """(H, W, 3) uint8 whose channels are 0/255 -> 8-colour palette PNG (~4x smaller than RGB; decodes to the same RGB)."""
    from PIL import Image

    bits = (rgb[..., 0] > 127).astype(np.uint8) * 4 + (rgb[..., 1] > 127) * 2 + (rgb[..., 2] > 127)
    if not np.array_equal(np.where(rgb > 127, 255, 0), rgb):
        raise ValueError("palette PNG needs bilevel channels")
    image = Image.frombytes("P", (bits.shape[1], bits.shape[0]), np.ascontiguousarray(bits, np.uint8).tobytes())
    palette = []
    for k in range(8):
        palette += [255 * (k >> 2 & 1), 255 * (k >> 1 & 1), 255 * (k & 1)]
    image.putpalette(palette)
    image.save(path, optimize=True)


# ------------------------------------------------------------------------------------------ CWRU
# <rpm>_ prefix optional (any speed: 1797 / 1772 / 1750 / 1730 rpm for 0-3 HP; missing = 0, unknown).
# <end> is the bearing the fault was seeded in; fan-end (FE) files carry no rate: CWRU recorded them all
# at 12 kHz (the npz README: "FE data were collected at 12k samples/second").
_CWRU_NAME = re.compile(r"^(?:(?P<rpm>\d+)_)?(?P<fault>Normal|B|IR|OR@\d+|OR)(?:_(?P<mil>\d+))?(?:_(?P<end>DE|FE)(?P<khz>\d+)?)?$")
_FAN_END_RATE = 12_000


@dataclass
class VibrationRecording:
    path: Path
    signal: np.ndarray = field(repr=False)  # (N,) float32, drive-end accelerometer, g
    sample_rate: int
    label: int  # index into FAULT_CLASSES
    rpm: int
    diameter_mil: int  # 0 for normal


def parse_cwru_name(name: str) -> dict:
    match = _CWRU_NAME.match(Path(name).stem)
    if match is None:
        raise ValueError(f"cannot read label/rate from CWRU file name {name!r}")
    fault = match["fault"]
    code = _FAULT_CODE["OR" if fault.startswith("OR") else fault]
    if match["khz"]:
        rate = int(match["khz"]) * 1000
    elif match["end"] == "FE":
        rate = _FAN_END_RATE
    elif fault == "Normal":
        rate = 48_000  # CWRU's normal baselines are 48 kHz recordings at every load (MANIFEST, data/README)
    else:
        raise ValueError(f"no sample rate in CWRU file name {name!r}")
    return {"label": code, "rpm": int(match["rpm"] or 0), "rate": rate, "mil": int(match["mil"] or 0)}


CWRU_SENSORS = ("DE", "FE", "BA")  # drive-end, fan-end and base accelerometers


def open_npz(path: Path):
    """``np.load`` of an .npz archive, refused with a plain message when the file is not one (numpy
    otherwise blames pickled data or a bad zip file)."""
    import zipfile

    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path} is not a NumPy .npz archive (np.savez output expected)") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):  # a bare .npy saved under an .npz name
        raise ValueError(f"{path} is a single .npy array, not an .npz archive of named arrays")
    return archive


def numeric_array(archive, key: str, path: Path) -> np.ndarray:
    """``archive[key]`` as float64, refused with a message naming the file and key when it is not numbers."""
    try:
        return np.asarray(archive[key], np.float64)
    except (ValueError, TypeError) as exc:  # object arrays (pickles refused), strings
        raise ValueError(f"{path}: array {key!r} is not numeric data") from exc


def load_cwru(root: Path, sensor: str = "DE") -> list[VibrationRecording]:
    """Every *.npz under ``root`` read from one accelerometer: ``DE`` (the default; a file without it gives
    its first array), or ``FE`` / ``BA``, which skip the files that lack that channel.

    Fan-end fault recordings (``*_FE.npz``) are read only for ``FE``: the model learnt drive-end bearing
    faults, so a fan-end fault seen from another accelerometer is another task, not a held-out drive-end
    one; they are skipped, and counted in a warning, for ``DE`` and ``BA``."""
    if sensor not in CWRU_SENSORS:
        raise ValueError(f"sensor must be one of {', '.join(CWRU_SENSORS)}, not {sensor!r}")
    from core.data import dataset_files

    files = dataset_files(root, ".npz")
    if not files:
        raise FileNotFoundError(f"no *.npz files under {root}")
    recordings, fan_end_skipped = [], []
    for f in files:
        meta = parse_cwru_name(f.name)
        if _CWRU_NAME.match(Path(f.name).stem)["end"] == "FE" and sensor != "FE":
            fan_end_skipped.append(f.name)
            continue
        with open_npz(f) as z:
            if sensor not in z.files and sensor != "DE":
                continue
            if not z.files:
                raise ValueError(f"{f} holds no arrays (expected the accelerometer channels DE / FE / BA)")
            key = sensor if sensor in z.files else z.files[0]
            signal = numeric_array(z, key, f).reshape(-1)
        if not np.isfinite(signal).all():
            raise ValueError(f"{f}: the {key} recording has NaN or infinite samples (expected finite accelerations in g)")
        recordings.append(
            VibrationRecording(f, signal.astype(np.float32), meta["rate"], meta["label"], meta["rpm"], meta["mil"])
        )
    skipped_note = ""
    if fan_end_skipped:
        skipped_note = (f"{len(fan_end_skipped)} fan-end fault recording(s) skipped for the {sensor} accelerometer "
                        f"(read only with sensor FE): {', '.join(fan_end_skipped[:3])}"
                        f"{', ...' if len(fan_end_skipped) > 3 else ''}")
        warnings.warn(f"CWRU: {skipped_note}", stacklevel=2)  # as evaluate_deeppcb reports boards read without a template
    if not recordings:
        raise FileNotFoundError(f"no *.npz file under {root} has the {sensor} channel"
                                + (f"; {skipped_note}" if skipped_note else ""))
    return recordings
