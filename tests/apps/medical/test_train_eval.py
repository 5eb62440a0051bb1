import json

import numpy as np
import pytest

from apps.medical.data import load_rendered, parse_patient_range


def test_training_writes_a_verified_bundle_with_card(tiny_bundle):
    bundle_dir, metrics = tiny_bundle
    for key in ("val_auc_fused", "val_auc_ct_only", "val_auc_text_only", "temperature"):
        assert key in metrics
    card = json.loads((bundle_dir / "card.json").read_text())
    assert card["sha256"] and card["extra"]["patients"]
    assert all(int(p[-4:]) <= 800 for p in card["extra"]["patients"])
    assert "LIDC-IDRI-0801" not in (bundle_dir / "MODEL_CARD.md").read_text().split("never used")[0][-40:]


@pytest.mark.parametrize("modalities,seen", [("ct", "val_auc_ct_only"), ("report", "val_auc_text_only")])
def test_a_dedicated_single_modality_model_is_validated_on_its_modality(toy_studies, tiny_bert_dir, tmp_path, monkeypatch,
                                                                         modalities, seen):
    import apps.medical.train as medical_train
    from apps.medical.train import FusionTrainConfig, train_fusion

    built = []

    class Recorded(medical_train.StudyDataset):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append((self.train, self.modality_dropout, self.present_ct, self.present_report))

    monkeypatch.setattr(medical_train, "StudyDataset", Recorded)
    out = tmp_path / modalities
    _, metrics = train_fusion(toy_studies, out, FusionTrainConfig.from_name("tiny", modalities=modalities),
                              patients=(1, 800), bert_path=str(tiny_bert_dir), log=lambda m: None)
    # the training and validation sets never show the other input (no dropout needed to hide it)
    assert built[0] == (True, 0.0, modalities == "ct", modalities == "report")
    assert built[1] == (False, 0.0, modalities == "ct", modalities == "report")
    assert metrics["val_auc"] == pytest.approx(metrics[seen])
    assert json.loads((out / "config.json").read_text())["modalities"] == modalities
    assert "-only model" in (out / "MODEL_CARD.md").read_text()
    with pytest.raises(ValueError, match="modalities"):
        train_fusion(toy_studies, tmp_path / "x", FusionTrainConfig.from_name("tiny", modalities="ecg"), patients=(1, 800),
                     bert_path=str(tiny_bert_dir), log=lambda m: None)


def test_history_dropout_hides_the_history_of_training_reports_only():
    """A dropped history: risk factors back to the population centre (0), about half the clauses, never none."""
    import torch

    from apps.medical.train import StudyDataset

    volumes = {"crops": np.zeros((2, 2, 3, 3, 3), np.uint8), "geometry": np.zeros((2, 2, 7), np.float32),
               "cmask": np.ones((2, 2), bool)}
    mask = torch.tensor([[True] * 6 + [False] * 2, [True] + [False] * 7])
    risk = torch.ones(2, 16)
    torch.manual_seed(0)
    train = StudyDataset(volumes, torch.zeros(2, 8, 4), mask, np.array([0, 1]), train=True, risk=risk, history_dropout=1.0)
    kept = []
    for _ in range(50):
        full, single = train[0], train[1]
        assert float(full["risk"].abs().sum()) == 0 and float(single["risk"].abs().sum()) == 0
        assert not (full["segment_mask"] & ~mask[0]).any() and full["segment_mask"].any()
        assert single["segment_mask"].tolist() == mask[1].tolist()  # its one clause is kept
        kept.append(int(full["segment_mask"].sum()))
    assert 1 <= min(kept) and max(kept) <= 6 and 2 <= float(np.mean(kept)) <= 4
    held_out = StudyDataset(volumes, torch.zeros(2, 8, 4), mask, np.array([0, 1]), risk=risk, history_dropout=1.0)
    assert held_out[0]["segment_mask"].tolist() == mask[0].tolist() and float(held_out[0]["risk"].sum()) == 16
    untouched = StudyDataset(volumes, torch.zeros(2, 8, 4), mask, np.array([0, 1]), train=True, risk=risk)
    assert untouched[0]["segment_mask"].tolist() == mask[0].tolist()


def test_history_dropout_by_factor_keeps_about_half_of_them_and_sex_with_age():
    import torch

    from apps.medical.risk import RISK_FACTORS
    from apps.medical.train import StudyDataset

    volumes = {"crops": np.zeros((1, 2, 3, 3, 3), np.uint8), "geometry": np.zeros((1, 2, 7), np.float32),
               "cmask": np.ones((1, 2), bool)}
    risk = torch.arange(1, 17, dtype=torch.float32).unsqueeze(0)
    torch.manual_seed(0)
    train = StudyDataset(volumes, torch.zeros(1, 8, 4), torch.ones(1, 8, dtype=torch.bool), np.array([1]), train=True,
                         risk=risk, history_dropout=1.0, history_dropout_factors=True)
    age, female = RISK_FACTORS.index("age"), RISK_FACTORS.index("female")
    kept = []
    for _ in range(200):
        row = train[0]["risk"]
        assert ((row == risk[0]) | (row == 0)).all() and bool(row[age] == 0) == bool(row[female] == 0)
        kept.append(int((row != 0).sum()))
    assert 0.35 <= np.mean(kept) / 16 <= 0.65 and min(kept) < 8 < max(kept)


def test_evaluation_patients_are_never_trained_on(toy_studies, tmp_path):
    from apps.medical.train import FusionTrainConfig, train_fusion

    with pytest.raises(ValueError, match="reserved for evaluation"):
        train_fusion(toy_studies, tmp_path, FusionTrainConfig.from_name("tiny"), patients=(1, 1012))


def test_eval_ct_reports_the_documented_keys(tiny_bundle, toy_studies, tiny_bert_dir):
    from apps.medical.evaluate import evaluate_ct

    metrics = evaluate_ct(toy_studies, tiny_bundle[0], str(tiny_bert_dir))
    assert {"auc", "auc_ct_only", "auc_text_only", "accuracy", "ece"} <= set(metrics)
    assert all(isinstance(v, float) for v in metrics.values())
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["ece"] <= 1


def test_eval_ct_splits_by_case_mix_and_patient_side(tiny_bundle, toy_studies, tiny_bert_dir):
    from apps.medical.data import load_rendered, patient_split
    from apps.medical.evaluate import evaluate_ct

    metrics = evaluate_ct(toy_studies, tiny_bundle[0], str(tiny_bert_dir))
    # toy labels.csv: contrast on studies 0-1, 4-5, 8-9 (both labels in each group), every slice 2 mm
    assert metrics["studies_contrast"] == 6 and metrics["studies_plain"] == 6
    assert metrics["studies_slices_2p5mm_or_less"] == 12 and "auc_slices_over_2p5mm" not in metrics
    assert all(0 <= metrics[f"auc_{g}"] <= 1 for g in ("contrast", "plain", "ct_only_contrast", "ct_only_plain"))
    val = [s for s in load_rendered(toy_studies) if patient_split(s.patient_id) == "val"]
    assert len(val) == 2 and {s.label for s in val} == {0, 1}  # patients 0008 and 0009
    assert evaluate_ct(toy_studies, tiny_bundle[0], str(tiny_bert_dir), side="val")["studies"] == 2
    with pytest.raises(ValueError, match="side"):
        evaluate_ct(toy_studies, tiny_bundle[0], str(tiny_bert_dir), side="test")


def test_rendered_loader_and_patient_ranges(toy_studies):
    studies = load_rendered(toy_studies)
    assert len(studies) == 12 and {s.label for s in studies} == {0, 1}
    assert all(s.report and s.volume_path.is_file() for s in studies)
    assert len(load_rendered(toy_studies, (1, 4))) == 4
    assert parse_patient_range("LIDC-IDRI-0801:LIDC-IDRI-1012") == (801, 1012)
    assert parse_patient_range("1:800") == (1, 800)


def test_volume_pipeline_gives_windowed_arrays(toy_studies):
    from apps.medical.volumes import load_volume

    volume = load_volume(load_rendered(toy_studies)[0].volume_path, (8, 12, 12))
    assert volume.shape == (8, 12, 12) and volume.dtype == np.float32
    assert 0.0 <= volume.min() and volume.max() <= 1.0 and volume.std() > 0.05


@pytest.mark.slow
def test_toy_model_learns_the_toy_signal(tmp_path, tiny_bert_dir):
    """A few epochs on 40 generated studies must beat chance on held-out patients (the loop works)."""
    from apps.medical.toydata import write_toy_dataset
    from apps.medical.train import FusionTrainConfig, train_fusion

    root = write_toy_dataset(tmp_path / "toy", n=40, shape=(16, 24, 24), seed=1)
    config = FusionTrainConfig.from_name("tiny")
    config.loop.epochs = 10
    config.loop.lr = 3e-3
    _, metrics = train_fusion(root, None, config, patients=(1, 800), bert_path=str(tiny_bert_dir), log=lambda m: None)
    assert metrics["val_auc_fused"] > 0.6


def test_pack_round_trip_trains_without_bert_weights(tmp_path, toy_studies, tiny_bert_dir):
    """A pack carries posterised volumes + clause vectors; training from it needs no BERT folder."""
    from apps.medical.model import MedicalModelConfig, build_model, load_model, posterise
    from apps.medical.train import FusionTrainConfig, load_arrays, read_pack, train_from_pack, write_pack

    model = build_model(MedicalModelConfig.from_name("tiny"), bert_path=str(tiny_bert_dir))
    arrays = load_arrays(toy_studies, model, (1, 800), log=lambda m: None)
    write_pack(arrays, model, tmp_path / "pack")
    back, _, bert_config = read_pack(tmp_path / "pack")
    import torch

    expected = posterise(torch.from_numpy(arrays["volumes"]).float() / 255, 16)
    assert torch.allclose(torch.from_numpy(back["volumes"]).float() / 255, expected, atol=1 / 255)
    assert bert_config["hidden_size"] == 16 and list(back["study_ids"]) == list(arrays["study_ids"])
    runs = train_from_pack(tmp_path / "pack", tmp_path / "bundle", FusionTrainConfig.from_name("tiny"), log=lambda m: None)
    assert "seed0" in runs
    loaded, _ = load_model(tmp_path / "bundle", str(tiny_bert_dir))  # the real tokenizer + BERT at load time
    assert loaded.config.intensity_levels == 16


def test_candidate_pack_carries_crops_ranker_and_statistics(tmp_path, toy_studies, tiny_bert_dir):
    """A candidate model's pack holds posterised crops and the ranker trained before packing; the
    model trained from it ranks proposals exactly as the packing model did."""
    import numpy as np
    import torch

    from apps.medical.model import MedicalModelConfig, build_model, load_model
    from apps.medical.train import FusionTrainConfig, load_arrays, read_pack, train_from_pack, write_pack

    model = build_model(MedicalModelConfig.from_name("tiny_candidates"), bert_path=str(tiny_bert_dir))
    arrays = load_arrays(toy_studies, model, (1, 800), cache=tmp_path / "cache", log=lambda m: None)
    assert 0.0 <= arrays["ranker_metrics"]["train_ranker_recall_all"] <= 1.0
    write_pack(arrays, model, tmp_path / "pack")
    back, _, _ = read_pack(tmp_path / "pack")
    levels = model.config.candidate_encoder.crop_levels
    expected = np.minimum(np.floor(arrays["volumes"]["crops"] / 255.0 * levels), levels - 1) / (levels - 1)
    assert np.allclose(back["volumes"]["crops"] / 255.0, expected, atol=1 / 255)
    assert np.array_equal(back["volumes"]["cmask"], arrays["volumes"]["cmask"])
    train_from_pack(tmp_path / "pack", tmp_path / "bundle", FusionTrainConfig.from_name("tiny_candidates"), log=lambda m: None)
    loaded, _ = load_model(tmp_path / "bundle", str(tiny_bert_dir))
    features = torch.rand(5, len(model.ranker.mean)).numpy()
    assert np.allclose(loaded.rank_candidates(features), model.rank_candidates(features), atol=1e-5)
    assert torch.allclose(loaded.ct_encoder.geometry_mean, model.ct_encoder.geometry_mean)


def test_a_pack_path_that_is_not_a_pack_folder_says_what_a_pack_is(tmp_path):
    from apps.medical.train import read_pack

    stray = tmp_path / "pack.npz"
    stray.write_bytes(b"PK")
    for path in (stray, tmp_path / "missing", tmp_path):
        with pytest.raises(FileNotFoundError, match="not a training pack.*--write-pack"):
            read_pack(path)
