"""An operator's own ultralytics checkpoint (``best.pt`` of ``yolo train``) as a detector bundle, converted once.

Serving never unpickles: a detector bundle is a safetensors state_dict plus the model YAML
(``detector.load_detector``). An ultralytics ``.pt`` is a pickle, so it is read here, by an explicit
offline command (``triptych data industrial bundle-detector --weights best.pt``), and never by the
service. Reading it does unpickle the file; that is acceptable only because it is the operator's own
file, and it is narrowed twice:
- only a local regular file is opened, after copying it under a neutral name: ultralytics' loader
  treats some names as official assets that it renames, fetches or re-downloads;
- it is unpickled with ``weights_only=True`` against ultralytics' allow-list of its model classes
  (``torch_safe_load(..., safe_only=True)``): a pickle that would call anything else is refused, not run.
The bundle written holds what the repository's own training writes, and the card names the
checkpoint by its sha256.
"""

from __future__ import annotations

import copy
import json
import numbers
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from apps.industrial.data import DEFECT_CLASSES

# Where `yolo train` leaves its weights: best.pt (best validation fitness) and last.pt, in runs/detect/NAME/weights.
CHECKPOINT_NAMES = ("best.pt", "last.pt", "weights/best.pt", "weights/last.pt")
EXPECTED = ("a .pt checkpoint of `yolo train` (runs/detect/NAME/weights/best.pt), a folder holding best.pt or last.pt, "
            "or a folder with model.safetensors from `triptych train industrial`")
# A converted network must give the checkpoint's own outputs; fp32 reorderings in fusing stay far below this.
MAX_OUTPUT_DIFFERENCE = 1e-3


class CheckpointError(ValueError):
    """A path given as detector weights that cannot become a bundle; the message says why and what would."""


def find_detector_weights(path: str | Path) -> Path:
    """The file or folder ``--weights`` names: an ultralytics ``.pt`` file, or a folder with model.safetensors.

    A folder without model.safetensors yields the first of CHECKPOINT_NAMES it holds."""
    text = str(path)
    if re.match(r"^[a-z][a-z0-9+.-]*://", text, re.IGNORECASE):
        raise CheckpointError(f"{text} is a URL: give a local file (nothing is downloaded); expected {EXPECTED}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; expected {EXPECTED}")
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            return path
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path} holds neither model.safetensors nor {', '.join(CHECKPOINT_NAMES)}; expected {EXPECTED}")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file (a pipe, socket or device); expected {EXPECTED}")
    if path.name == "model.safetensors":
        return path.parent
    if path.suffix.lower() != ".pt":
        raise CheckpointError(f"{path} is not an ultralytics checkpoint (.pt); expected {EXPECTED}")
    return path


def deeppcb_class_order(names: list[str], source: Path) -> list[int]:
    """For each DeepPCB class in the service's order, the checkpoint's index of the same class.

    A line's thresholds, size limits and reports are per class name, so a checkpoint is accepted only
    when its names are DeepPCB's six, in any order; spelling differences in case, spaces, '-' and '_'
    are ignored (``Pin_Hole`` is ``pin-hole``). Anything else is refused: a guess that called opens shorts
    would pass boards that must fail."""
    def key(name: str) -> str:
        return re.sub(r"[\s_-]+", "", str(name)).lower()

    theirs = [key(n) for n in names]
    ours = [key(n) for n in DEFECT_CLASSES]
    if sorted(theirs) != sorted(ours):
        raise CheckpointError(
            f"{source}: its classes {list(names)} are not the service's DeepPCB classes {list(DEFECT_CLASSES)}. "
            "Defects are reported, sized and thresholded by these six names, so a checkpoint must name the same six "
            "(any order; case, spaces, '-' and '_' do not matter): train it on the data.yaml that "
            "`triptych data industrial prepare` writes")
    return [theirs.index(k) for k in ours]


def reorder_head_classes(model, order: list[int], source: Path) -> None:
    """Permute the class outputs of the Detect head in place so that output i is DeepPCB class i.

    The class scores come from the last 1x1 convolution of each scale's class branch (``cv3``, and
    ``one2one_cv3`` on end-to-end heads): permuting its output channels permutes the scores exactly."""
    import torch
    from torch import nn

    head = model.model[-1]
    branches = [b for attr in ("cv3", "one2one_cv3") for b in getattr(head, attr, [])]
    if not branches or not all(isinstance(b, nn.Sequential) and isinstance(b[-1], nn.Conv2d) and b[-1].out_channels == len(order)
                               for b in branches):
        raise CheckpointError(f"{source}: its classes are DeepPCB's in another order, and its {type(head).__name__} head "
                              "has no class convolution to reorder; train it with the classes in DeepPCB's order")
    with torch.no_grad():
        for branch in branches:
            conv = branch[-1]
            conv.weight.copy_(conv.weight[order])
            if conv.bias is not None:
                conv.bias.copy_(conv.bias[order])


def load_ultralytics_checkpoint(path: Path) -> tuple[object, dict, str]:
    """(DetectionModel, checkpoint dict, sha256 of the file) from a local ultralytics ``.pt``, loaded restricted."""
    import inspect

    from core.offline import enforce_offline

    enforce_offline()
    import torch  # noqa: F401  (torch before ultralytics: see stack.md)
    from ultralytics.nn.tasks import DetectionModel, torch_safe_load

    from core.bundle import sha256_file

    if "safe_only" not in inspect.signature(torch_safe_load).parameters:
        raise CheckpointError("this ultralytics cannot load a checkpoint restricted to its model classes (weights_only); "
                              "upgrade ultralytics to convert checkpoints")
    with tempfile.TemporaryDirectory(prefix="triptych-checkpoint-") as tmp:
        neutral = Path(tmp) / "checkpoint.pt"
        shutil.copyfile(path, neutral)  # the bytes read are the bytes hashed, whatever happens to the original
        sha256 = sha256_file(neutral)
        if not zipfile.is_zipfile(neutral):
            raise CheckpointError(f"{path} is not a PyTorch checkpoint: torch.save writes a zip archive, this file is not one; "
                                  f"expected {EXPECTED}")
        try:
            ckpt, _ = torch_safe_load(neutral, safe_only=True)
        except AttributeError as exc:  # an object that is neither a dict nor a YOLO wrapper (e.g. one tensor)
            raise CheckpointError(f"{path} holds no ultralytics model ({exc}); expected {EXPECTED}") from exc
        except (TypeError, ModuleNotFoundError) as exc:
            if "references types outside" in str(exc):
                raise CheckpointError(f"{path} holds Python objects other than ultralytics' and torch's model classes: they "
                                      "were refused, not run (a checkpoint written by `yolo train` holds none)") from exc
            # ultralytics' first line says what is wrong; its advice (download an official model) does not apply here
            detail = str(exc).replace(str(neutral), path.name).replace("ERROR ❌️", "").strip().splitlines()[0]
            raise CheckpointError(f"{path} cannot be read as an ultralytics checkpoint: {detail}") from exc
    model = next((m for m in (ckpt.get("ema"), ckpt.get("model")) if isinstance(m, torch.nn.Module)), None)
    if model is None:
        raise CheckpointError(f"{path} holds no ultralytics model: a checkpoint of `yolo train` has one under 'model' or 'ema' "
                              f"(this one has {sorted(map(str, ckpt))[:8]}; a bare state_dict carries no architecture)")
    if type(model) is not DetectionModel:
        raise CheckpointError(f"{path} holds a {type(model).__name__}; only detection models (`yolo detect train`) convert")
    return model, ckpt, sha256


def checkpoint_imgsz(ckpt: dict, model, default: int = 640) -> int:
    """The square training size the checkpoint records (``train_args.imgsz``), else ``default``."""
    args = ckpt.get("train_args") or getattr(model, "args", None) or {}
    imgsz = args.get("imgsz") if isinstance(args, dict) else getattr(args, "imgsz", None)
    if isinstance(imgsz, (list, tuple)) and len(imgsz) == 2 and imgsz[0] == imgsz[1]:
        imgsz = imgsz[0]
    stride = int(max(getattr(model, "stride", [32])))
    return int(imgsz) if isinstance(imgsz, int) and imgsz > 0 and imgsz % stride == 0 else default


def _arch_label(cfg: dict, arch: str | None, source: Path) -> str:
    """The bundle's architecture name: the YAML's own (``yolo11n`` from yolo11n.yaml); ``arch`` must agree with it."""
    own = Path(str(cfg["yaml_file"])).stem if cfg.get("yaml_file") else None
    if arch and own and arch != own:
        raise CheckpointError(f"--arch {arch} but {source} holds a {own} (its model YAML); leave --arch out for a checkpoint")
    return own or arch or "ultralytics"


def _verify(source_model, cfg: dict, state: dict, order: list[int], canvas: int, source: Path) -> float:
    """Largest difference between the checkpoint's own network and the one the bundle will load, on one input.

    Catches what a state_dict alone cannot: weights saved after ``fuse()``, a head whose output is not the
    (4 box + 6 class) rows per anchor the service decodes, a wrong class permutation."""
    import torch

    from apps.industrial.detector import model_from_state

    try:
        built = model_from_state(cfg, state)
    except (ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{source}: its weights do not fit the model YAML it carries (a model fused before saving? "
                              f"convert the training checkpoint, weights/best.pt): {exc}") from exc
    reference = copy.deepcopy(source_model).float().eval().fuse(verbose=False)
    x = torch.rand(1, 3, canvas, canvas, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours, theirs = built(x), reference(x)
    ours = ours[0] if isinstance(ours, (list, tuple)) else ours
    theirs = theirs[0] if isinstance(theirs, (list, tuple)) else theirs
    rows = 4 + len(DEFECT_CLASSES)
    if ours.ndim != 3 or ours.shape[1] != rows:
        raise CheckpointError(f"{source}: its head returns {tuple(ours.shape)}, not the (batch, {rows}, anchors) boxes and class "
                              "scores the service decodes (an end-to-end / NMS-free head does not convert)")
    expected = torch.cat([theirs[:, :4], theirs[:, 4:][:, order]], 1)
    difference = float((ours - expected).abs().max())
    if not difference <= MAX_OUTPUT_DIFFERENCE:
        raise CheckpointError(f"{source}: the converted network differs from the checkpoint's by {difference:.3g}; nothing written")
    return difference


def bundle_from_checkpoint(checkpoint: Path, out: Path, arch: str | None = None, conf: float = 0.25, input_mode: str = "gray",
                           held_out_groups: tuple[str, ...] = (), border: int = 0):
    """Write a detector bundle (model.safetensors, config.json with the model YAML, card) from an ultralytics ``.pt``.

    The weights are the checkpoint's own (its EMA for an unfinished run, as ultralytics loads it), their classes
    permuted into DeepPCB's order when the checkpoint names them in another (``deeppcb_class_order``). Before
    anything is written, the network the bundle describes is run against the checkpoint's (``_verify``).
    Returns the core Bundle."""
    from apps.industrial.detector import DetectorConfig, detector_bundle_config
    from core.bundle import ModelCard, save_bundle

    checkpoint = Path(checkpoint)
    model, ckpt, sha256 = load_ultralytics_checkpoint(checkpoint)
    cfg = dict(model.yaml)
    channels = cfg.get("channels", cfg.get("ch", 3))
    if channels != 3:
        raise CheckpointError(f"{checkpoint}: the network takes {channels} input channels; the service gives it 3")
    raw_names = model.names if isinstance(model.names, dict) else dict(enumerate(model.names))
    names = [raw_names[i] for i in sorted(raw_names)]
    if cfg.get("nc") != len(names):
        raise CheckpointError(f"{checkpoint}: its YAML has nc={cfg.get('nc')} but it names {len(names)} classes {names}")
    order = deeppcb_class_order(names, checkpoint)
    label = _arch_label(cfg, arch, checkpoint)
    converted = model
    if order != list(range(len(order))):
        converted = copy.deepcopy(model)
        reorder_head_classes(converted, order, checkpoint)
    state = {k: v.detach().cpu() for k, v in converted.state_dict().items()}
    try:  # config.json stores the YAML; a value JSON cannot hold would be lost there
        model_cfg = json.loads(json.dumps({k: v for k, v in cfg.items() if k != "yaml_file"}))
    except TypeError as exc:
        raise CheckpointError(f"{checkpoint}: its model YAML holds values that JSON cannot store: {exc}") from exc
    config = DetectorConfig(arch=label, imgsz=checkpoint_imgsz(ckpt, model), conf=conf, input=input_mode, border=border)
    difference = _verify(model, model_cfg, state, order, config.canvas, checkpoint)

    from apps.industrial.fusion_train import ULTRALYTICS_VAL_KEYS

    train_args = ckpt.get("train_args") or {}
    reported = {str(k).replace("metrics/", "").replace("(B)", ""): v for k, v in (ckpt.get("train_metrics") or {}).items()}
    metrics = {f"ultralytics_val_{k}": float(reported[k]) for k in ULTRALYTICS_VAL_KEYS if isinstance(reported.get(k), numbers.Real)}
    td = input_mode == "template-diff"
    card = ModelCard(
        name=f"industrial-detector-{label}-imported" + ("-template" if td else ""),
        version="0.1.0",
        task=(f"PCB defect detection ({', '.join(DEFECT_CLASSES)}) at {config.imgsz} px, from an ultralytics checkpoint "
              f"trained outside this repository; input: " + ("tested image, template, |difference|" if td else "8-bit gray, binarised, in 3 channels")),
        data=[f"the operator's, not recorded here; the checkpoint's training data setting: {train_args.get('data') or 'not recorded'}"],
        split="the operator's (ultralytics' own validation during training); not measured by this repository",
        metrics=metrics,
        reproduce=(f"triptych data industrial bundle-detector --weights {checkpoint.name} --out OUT --conf {conf} --input {input_mode}"
                   + (f" --exclude-groups {','.join(held_out_groups)}" if held_out_groups else "") + (f" --border {border}" if border else "")),
        limitations=[
            "converted from an ultralytics checkpoint: ultralytics_val_* are ultralytics' validator numbers on the operator's "
            "validation set, not this repository's evaluation (`triptych eval industrial --deeppcb DIR --detector OUT`)",
            f"board decision threshold {conf} as given to bundle-detector, not chosen on held-out boards "
            "(`triptych data industrial threshold --bundle OUT --deeppcb DIR`)",
            "no Platt scaling: the service's Bayesian rule falls back to the image rule (`triptych data industrial platt`)",
            "no INT8 model: serve with TRIPTYCH_INDUSTRIAL_DETECTOR_PRECISION=fp32 or add one "
            "(`triptych data industrial quantize --bundle OUT --deeppcb DIR`)",
        ],
        notes=("" if names == list(DEFECT_CLASSES) else f"Classes matched by name to the checkpoint's {names}"
               + (", its class outputs reordered into DeepPCB's order." if order != list(range(len(order))) else ".")),
        # default=str: train_args may hold paths; the card keeps them as text
        extra=json.loads(json.dumps({"source_checkpoint": {
            # not "file": the card lists {"file", "sha256"} entries as files inside the bundle
            "checkpoint": checkpoint.name, "sha256": sha256, "class_names": names, "ultralytics_version": ckpt.get("version"),
            "date": ckpt.get("date"), "epoch": ckpt.get("epoch"), "yaml_file": cfg.get("yaml_file"),
            "train_args": {k: train_args.get(k) for k in ("data", "epochs", "imgsz", "batch") if k in train_args},
            "max_output_difference": difference,
        }}, default=str)),
    )
    bundle_config = detector_bundle_config(config, model_cfg)
    if held_out_groups:
        bundle_config["held_out_groups"] = list(held_out_groups)
    return save_bundle(out, state, bundle_config, card)
