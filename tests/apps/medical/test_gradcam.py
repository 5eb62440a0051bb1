import io

import numpy as np
import pytest
import torch
from PIL import Image

from apps.medical.gradcam import describe_location, grad_cam, overlay_png, top_slices
from apps.medical.model import MedicalModelConfig, build_model


def test_grad_cam_covers_the_volume_and_peaks_inside(tiny_bert_dir):
    torch.manual_seed(0)
    model = build_model(MedicalModelConfig.from_name("tiny"), bert_path=str(tiny_bert_dir)).eval()
    ct = torch.rand(1, 1, 16, 24, 24)
    result = grad_cam(model, ct, model.report_encoder.tokenize(["Former smoker."]))
    assert result.heatmap.shape == (16, 24, 24)
    assert 0.0 <= result.heatmap.min() and result.heatmap.max() <= 1.0 + 1e-6
    assert result.heatmap[result.peak] == result.heatmap.max()
    assert 0.0 <= result.probability <= 1.0 and abs(sum(result.weights) - 1) < 1e-5
    assert all(p.grad is None for p in model.parameters())  # CAM must not leave gradients behind


def test_top_slices_are_hottest_and_spread():
    heat = np.zeros((10, 4, 4))
    heat[7, 1, 1], heat[6, 2, 2], heat[2, 0, 0] = 1.0, 0.9, 0.5
    assert top_slices(heat, k=2, min_gap=2) == [7, 2]


def test_overlay_is_a_png_of_the_slice():
    volume = np.random.rand(4, 8, 10).astype(np.float32)
    heat = np.zeros_like(volume)
    heat[1, 2:4, 2:4] = 1
    data = overlay_png(volume, heat, 1, scale=2)
    image = Image.open(io.BytesIO(data))
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and image.size == (20, 16) and image.mode == "RGB"
    pixels = np.asarray(image).astype(int)
    assert abs(pixels[5, 5, 0] - pixels[5, 5, 2]) > 20  # heat coloured; elsewhere grey
    assert pixels[14, 18, 0] == pixels[14, 18, 1] == pixels[14, 18, 2]


def test_location_description():
    loc = describe_location((15, 5, 2), (16, 24, 24))
    assert loc["voxel_zyx"] == [15, 5, 2] and "upper third" in loc["description"] and "estimate" in loc["description"]


@pytest.mark.parametrize("layout", ["dicom", "nifti"])
def test_location_side_is_the_patients_side(tmp_path, layout):
    """A nodule in the patient's right lung (DICOM: small column, the left of the image) must be
    described as right, whichever file carried it: the shared layout's x runs patient left -> right."""
    from apps.medical.candidates import hu_from_ctvolume
    from apps.medical.ingest import ingest_path
    from apps.medical.render.writers import write_dicom_series, write_nifti

    volume = np.full((12, 32, 32), 40, np.int16)  # (z, y, x = DICOM column): soft tissue ...
    volume[:, 8:24, 2:30] = -850  # ... around lung
    volume[6, 16, 6] = 400  # a nodule on the patient's right (LPS x small)
    spacing, origin = (2.5, 1.5, 1.5), (-24.0, -24.0, -100.0)
    if layout == "dicom":
        path = write_dicom_series(tmp_path / "ct", volume, spacing, origin, patient_id="P1", study_key="k")
    else:
        path = write_nifti(tmp_path / "ct.nii.gz", volume, spacing, origin)
    hu, _ = hu_from_ctvolume(ingest_path(path))
    peak = tuple(int(i) for i in np.unravel_index(int(hu.argmax()), hu.shape))
    assert describe_location(peak, hu.shape)["description"].startswith("right lung")


def test_heat_map_slices_show_the_patients_right_on_the_images_left(tiny_bundle, tiny_bert_dir, tmp_path):
    """Radiological convention, as the source DICOM images and every PACS viewer: a slice whose
    patient-right half is bright (the layout's x runs from the patient's left to right) must be drawn
    bright on the image's left, or the Secondary Capture filed next to the study is mirrored."""
    from apps.medical.service import MedicalRunner, StudyInput

    runner = MedicalRunner(tiny_bundle[0], tmp_path, str(tiny_bert_dir))
    volume = np.zeros(runner.volume_shape, np.float32)  # (D, H, W)
    volume[..., volume.shape[2] // 2:] = 1.0  # the patient's right half
    result = runner.analyze(StudyInput(volume=volume, report=None))
    for name in result["heatmaps"]:
        pixels = np.asarray(Image.open(runner.artefact_path(result["artefact_id"], name))).astype(float)
        half = pixels.shape[1] // 2
        assert pixels[:, :half].mean() > pixels[:, half:].mean() + 50, name
