import pytest
import torch

from apps.medical.model import MedicalModelConfig, build_model, fit_calibration, load_model


def _model(tiny_bert_dir):
    torch.manual_seed(0)
    return build_model(MedicalModelConfig.from_name("tiny"), bert_path=str(tiny_bert_dir)).eval()


def test_missing_modalities_get_zero_weight(tiny_bert_dir):
    model = _model(tiny_bert_dir)
    ct = torch.rand(2, 1, 16, 24, 24)
    report = model.report_encoder.tokenize(["Former smoker.", "Never smoker."])
    logits, weights = model(ct, report)
    assert logits.shape == (2,) and torch.allclose(weights.sum(1), torch.ones(2))
    _, w_ct = model(ct, None)
    _, w_rep = model(None, report)
    assert torch.all(w_ct[:, 1] == 0) and torch.all(w_rep[:, 0] == 0)
    present = {"ct": torch.tensor([True, False]), "report": torch.tensor([False, True])}
    _, w_mixed = model(ct, report, present=present)
    assert w_mixed[0, 1] == 0 and w_mixed[1, 0] == 0


def test_calibration_recovers_a_known_scale():
    torch.manual_seed(0)
    z = torch.randn(4000)
    y = torch.bernoulli(torch.sigmoid(z))  # true probability sigmoid(z)
    t, b = fit_calibration(3 * z, y)  # logits 3x over-confident
    assert 2.5 < t < 3.5 and abs(b) < 0.2


def test_bundle_round_trip_without_shipping_bert(tiny_bundle, tiny_bert_dir):
    bundle_dir, _ = tiny_bundle
    model, bundle = load_model(bundle_dir, str(tiny_bert_dir))
    assert not any(k.startswith("net.encoders.report.bert.") for k in bundle.state_dict)
    again, _ = load_model(bundle_dir, str(tiny_bert_dir))
    ct = torch.rand(1, 1, 16, 24, 24)
    rep = model.report_encoder.tokenize(["Former smoker, 30 pack-years."])
    with torch.no_grad():
        assert torch.allclose(model(ct, rep)[0], again(ct, rep)[0])
    assert float(model.temperature) > 0


def test_bundle_refuses_a_different_bert(tiny_bundle, tmp_path):
    import pytest
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(str(tmp_path))
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(45)]))
    with pytest.raises(ValueError, match="different report BERT"):
        load_model(tiny_bundle[0], str(tmp_path))


def test_auxiliary_heads_give_per_modality_logits(tiny_bert_dir):
    config = MedicalModelConfig.from_name("tiny", aux_weight=0.5)
    model = build_model(config, bert_path=str(tiny_bert_dir))
    model(torch.rand(2, 1, 16, 24, 24), model.report_encoder.tokenize(["a", "b"]))
    assert model.aux_logits().shape == (2, 2)
    plain = build_model(MedicalModelConfig.from_name("tiny"), bert_path=str(tiny_bert_dir))
    plain(torch.rand(2, 1, 16, 24, 24), None)
    assert plain.aux_logits() is None


def test_evidence_sum_adds_the_present_modalities_head_logits(tiny_bert_dir):
    """evidence_sum: logit = joint head + the per-modality heads of the modalities present (an absent
    report adds nothing); it needs the per-modality heads."""
    with pytest.raises(ValueError, match="aux_weight"):
        build_model(MedicalModelConfig.from_name("tiny", evidence_sum=True), bert_path=str(tiny_bert_dir))
    torch.manual_seed(0)
    config = MedicalModelConfig.from_name("tiny", aux_weight=0.5, evidence_sum=True)
    model = build_model(config, bert_path=str(tiny_bert_dir)).eval()
    joint_only = build_model(config.replace(evidence_sum=False), bert_path=str(tiny_bert_dir)).eval()
    joint_only.load_state_dict(model.state_dict())
    ct, report = torch.rand(2, 1, 16, 24, 24), model.report_encoder.tokenize(["Former smoker.", "Never smoker."])
    present = {"ct": torch.tensor([True, True]), "report": torch.tensor([True, False])}
    with torch.no_grad():
        summed, weights = model(ct, report, present=present)
        aux = model.aux_logits()
        joint, joint_weights = joint_only(ct, report, present=present)
    assert torch.allclose(summed, joint + aux[:, 0] + torch.tensor([1.0, 0.0]) * aux[:, 1], atol=1e-6)
    assert torch.equal(weights, joint_weights)
    # what the service reports: each modality's own log-odds on the calibrated scale, 0 when absent
    model.temperature.fill_(2.0)
    evidence = model.modality_evidence()
    assert torch.allclose(evidence, torch.stack([aux[:, 0], torch.tensor([1.0, 0.0]) * aux[:, 1]], 1) / 2.0)
    assert evidence[1, 1] == 0 and joint_only.modality_evidence() is None


@pytest.mark.slow
def test_shipped_bundle_loads_verified_and_predicts():
    """`make serve` uses the bundle in apps/medical/weights/fusion with the bundled MiniLM."""
    from apps.medical.settings import MedicalSettings

    bundle_dir = MedicalSettings().bundle_dir
    if not (bundle_dir / "model.safetensors").is_file():
        pytest.skip("no shipped fusion bundle in this checkout")
    model, bundle = load_model(bundle_dir)
    assert bundle.sha256 and bundle.card.extra["patients"]
    assert max(int(p[-4:]) for p in bundle.card.extra["patients"]) <= 800
    if model.uses_candidates:
        stage = model.candidate_config()
        size = stage.crop
        features = model.config.candidate_encoder.geometry_features
        ct = {"crops": torch.rand(1, stage.k, 1, size, size, size), "geometry": torch.rand(1, stage.k, features),
              "mask": torch.ones(1, stage.k, dtype=torch.bool)}
        # the ranker (or detector) and the feature statistics were fitted before shipping (not the initial state)
        if model.uses_ranker:
            assert model.ranker.mean.abs().sum() > 0 and not torch.allclose(model.ranker.std, torch.ones_like(model.ranker.std))
        else:  # a trained detector: batch-norm statistics moved off their initial 0 / 1
            norm = model.detector.stem[1]
            assert norm.running_mean.abs().sum() > 0 and not torch.allclose(norm.running_var, torch.ones_like(norm.running_var))
        assert model.ct_encoder.geometry_mean.abs().sum() > 0
    else:
        ct = torch.rand(1, 1, *model.config.volume_shape)
    with torch.no_grad():
        logits, weights = model(ct, model.report_encoder.tokenize(["Former smoker. A nodule."]))
    p = model.calibrated(logits)
    assert 0 <= float(p) <= 1 and torch.allclose(weights.sum(1), torch.ones(1))


def test_shipped_single_input_models_are_the_default_only_beside_the_shipped_fusion_model(monkeypatch, tmp_path):
    from apps.medical import settings as settings_module
    from apps.medical.settings import SHIPPED_FUSION, SHIPPED_SINGLE_INPUT, MedicalSettings

    for name in ("BUNDLE_DIR", "CT_ONLY_BUNDLE_DIR", "REPORT_ONLY_BUNDLE_DIR"):
        monkeypatch.delenv(f"TRIPTYCH_MEDICAL_{name}", raising=False)
    assert MedicalSettings().bundle_dir == SHIPPED_FUSION
    assert MedicalSettings().report_only_bundle_dir == SHIPPED_SINGLE_INPUT["report_only_bundle_dir"]
    assert MedicalSettings().ct_only_bundle_dir is None  # none ships: the fusion model reads a CT alone
    monkeypatch.setattr(settings_module, "SHIPPED_SINGLE_INPUT", {"report_only_bundle_dir": tmp_path / "shipped"})
    assert MedicalSettings().report_only_bundle_dir == tmp_path / "shipped"  # beside the shipped fusion model
    assert MedicalSettings(bundle_dir=tmp_path).report_only_bundle_dir is None  # another fusion model: none of ours
    monkeypatch.setenv("TRIPTYCH_MEDICAL_REPORT_ONLY_BUNDLE_DIR", "")
    assert MedicalSettings().report_only_bundle_dir is None  # empty turns it off
    monkeypatch.setenv("TRIPTYCH_MEDICAL_REPORT_ONLY_BUNDLE_DIR", str(tmp_path))
    assert MedicalSettings(bundle_dir=tmp_path / "x").report_only_bundle_dir == tmp_path


@pytest.mark.slow
def test_shipped_report_only_model_answers_whole_histories_and_refuses_thin_ones(tmp_path):
    """`make serve`: a report without a CT is read by the shipped report-only model. A report that states too
    little is refused with what it lacks: the first report-only model answered such reports 0.0003-0.12 and the
    shipped one reads a bare "66-year-old woman." 0.90."""
    from apps.medical.service import MedicalRunner, ReportInputError, StudyInput
    from apps.medical.settings import MedicalSettings

    settings = MedicalSettings()
    if not (settings.bundle_dir / "model.safetensors").is_file() or settings.report_only_bundle_dir is None:
        pytest.skip("no shipped bundles in this checkout")
    runner = MedicalRunner(settings.bundle_dir, tmp_path, threads=1, report_only_dir=settings.report_only_bundle_dir)
    thin = ["x", "Follow-up of a pulmonary nodule.", "CLINICAL HISTORY: 66-year-old woman.", "Former smoker.",
            "CLINICAL HISTORY: 66-year-old man, never smoker. FINDINGS: A nodule in the left lower lobe."]
    refusals = runner.predict_batch([StudyInput(None, text) for text in thin])
    assert all(isinstance(r, ReportInputError) and r.code == "insufficient_history" for r in refusals), refusals
    assert "smoking status" in str(refusals[2]) and "age and sex" not in str(refusals[2])
    whole = ["CLINICAL HISTORY: 66-year-old woman, former smoker, 30 pack-years. FINDINGS: A nodule in the left lower lobe.",
             "CLINICAL HISTORY: 71-year-old man, current smoker, 25 cigarettes per day for 50 years (62.5 pack-years)."]
    answers = runner.predict_batch([StudyInput(None, text) for text in whole])
    assert all(a["answered_by"] == "report_only" and a["model_version"].startswith("medical-report-only-") for a in answers)
    assert all(0.05 <= a["probability"] <= 0.95 for a in answers), [a["probability"] for a in answers]
    assert answers[0]["modality_weights"]["ct"] == 0.0


def test_a_new_model_takes_its_berts_width_and_a_loaded_one_must_match_it():
    """The tiny presets expect the tests' 16-wide BERT; a model about to be trained (``fit_bert_width``)
    records the width of the BERT it is given instead (the CLI's default MiniLM: 384)."""
    wide = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 32, "max_position_embeddings": 32}
    config = MedicalModelConfig.from_name("tiny")
    with pytest.raises(ValueError, match="report encoder width 32 != config.bert_hidden 16"):
        build_model(config, bert_config=wide)  # as a bundle is loaded: the BERT must be the one it was trained with
    model = build_model(config, bert_config=wide, fit_bert_width=True)
    assert model.config.bert_hidden == 32 and config.bert_hidden == 16
