"""Single-input bundles (``--modalities ct|report``) ship only the modules their input reads, load and
answer exactly as the trained model did; ``triptych train medical --drop-unused`` re-saves an older bundle
that way without retraining, and writes nothing unless the answers stay bit-identical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.apps.medical.test_detector import tiny_detector_pack

# what each input's own modules are called in a MedicalModel's state (written out here, not taken from the code)
OWN = {m: (f"net.encoders.{m}.", f"net.projector.project.{m}.", f"net.fusion.specific.{m}.", f"aux.{m}.")
       for m in ("ct", "report")}
ABSENT = {"report": "ct", "ct": "report"}


def own_keys(keys, modality: str) -> list[str]:
    return [k for k in keys if k.startswith(OWN[modality]) or f".blocks.{modality}." in k]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def assert_same_answers(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(bits(a[key]), bits(b[key])), key


@pytest.fixture(scope="module")
def trained(tmp_path_factory, toy_studies, tiny_bert_dir):
    """A tiny detector's pack; the fusion model and a report-only and a CT-only model trained on it (with
    --share-detector), each as saved and as it was in memory when saved."""
    import apps.medical.train as medical_train
    from apps.medical.train import FusionTrainConfig, train_from_pack

    folder = tmp_path_factory.mktemp("single_input")
    tiny_detector_pack(folder, toy_studies, tiny_bert_dir, seed=0)
    in_memory = {}
    save = medical_train.save_fusion_bundle

    def recording(model, out, *args, **kwargs):
        in_memory[Path(out).name] = model
        return save(model, out, *args, **kwargs)

    medical_train.save_fusion_bundle = recording
    try:
        for name, modalities in (("fusion", "both"), ("report_only", "report"), ("ct_only", "ct")):
            train_from_pack(folder / "pack0", folder / name, FusionTrainConfig.from_name(
                "tiny_detector", modalities=modalities, share_detector=modalities != "both"), log=lambda m: None)
    finally:
        medical_train.save_fusion_bundle = save
    # a pack holds clause vectors, not the BERT: trained from one, a model has a random BERT of the pack's shape;
    # loaded, the frozen BERT is the one of --bert-path. The in-memory models read text with that one too.
    from apps.medical.model import load_model

    fusion, _ = load_model(folder / "fusion", str(tiny_bert_dir))
    for model in in_memory.values():
        model.report_encoder.bert, model.report_encoder.tokenizer = fusion.report_encoder.bert, fusion.report_encoder.tokenizer
        model.eval()
    return folder, in_memory


def test_a_single_input_bundle_holds_only_its_inputs_modules_and_answers_as_trained(trained, tiny_bert_dir):
    from safetensors.torch import load_file

    from apps.medical.model import load_model

    folder, in_memory = trained
    fusion_keys = set(load_file(folder / "fusion" / "model.safetensors"))
    assert own_keys(fusion_keys, "ct") and own_keys(fusion_keys, "report")  # the fusion model reads both
    fusion, _ = load_model(folder / "fusion", str(tiny_bert_dir))
    for name, modality in (("report_only", "report"), ("ct_only", "ct")):
        keys = set(load_file(folder / name / "model.safetensors"))
        trained_keys = set(in_memory[name].trainable_state()) - {k for k in fusion_keys if k.startswith("detector.")}
        assert own_keys(trained_keys, ABSENT[modality])  # the class has them ...
        assert not own_keys(keys, ABSENT[modality]), own_keys(keys, ABSENT[modality])[:3]  # ... the bundle does not
        assert own_keys(keys, modality) and {"temperature", "bias"} <= keys
        assert any(k.startswith("net.fusion.gate.") for k in keys) and any(k.startswith("net.router.") for k in keys)
        assert keys == trained_keys - set(own_keys(trained_keys, ABSENT[modality]))  # nothing else left out

        from apps.medical.train import model_answers, probe_inputs

        loaded, bundle = load_model(folder / name, str(tiny_bert_dir), detector_from=fusion, bert_from=fusion)
        assert bundle.config["modalities"] == modality
        ct, report, _ = probe_inputs(loaded)
        # its input alone (as served) and the other input given but masked (as evaluated), bit for bit
        assert_same_answers(model_answers(in_memory[name], ct, report, modality), model_answers(loaded, ct, report, modality))
        # loaded as zeros, not at random (the frozen BERT is no bundle's: it comes from its folder, shared)
        absent_params = [p for k, p in loaded.named_parameters() if own_keys([k], ABSENT[modality]) and ".bert." not in k]
        assert absent_params and all(not p.any() for p in absent_params)


def test_the_runner_answers_a_report_alone_with_the_slim_model_as_trained(trained, tiny_bert_dir, tmp_path):
    from apps.medical.service import MedicalRunner, StudyInput

    folder, in_memory = trained
    runner = MedicalRunner(folder / "fusion", tmp_path, bert_path=str(tiny_bert_dir), threads=1,
                           report_only_dir=folder / "report_only")
    history = "70-year-old woman, former smoker, 40 pack-years. A pulmonary nodule is noted."
    (answer,) = runner.predict_batch([StudyInput(None, history)])
    model = in_memory["report_only"]
    with torch.no_grad():
        logits, weights = model(None, model.report_encoder.tokenize([history]))
        evidence = model.modality_evidence()
    assert answer["answered_by"] == "report_only"
    assert answer["probability"] == round(float(model.calibrated(logits)[0]), 4)
    assert answer["modality_weights"] == {"ct": 0.0, "report": round(float(weights[0, 1]), 4)}
    assert answer["modality_evidence"] == {"ct": 0.0, "report": round(float(evidence[0, 1]), 4) + 0.0}


def old_style_copy(folder: Path, name: str, model, out: Path) -> Path:
    """``folder/name`` saved as single-input bundles were before: every tensor of the class but the detector."""
    from apps.medical.model import without_detector
    from core.bundle import CARD_JSON, CONFIG, ModelCard, save_bundle

    config = json.loads((folder / name / CONFIG).read_text())
    card = ModelCard(**json.loads((folder / name / CARD_JSON).read_text()))
    state, digest = without_detector(model.trainable_state())
    assert digest == config["detector_sha256"]
    save_bundle(out, state, config, card)
    return out


def test_drop_unused_re_saves_an_old_bundle_without_retraining(trained, tiny_bert_dir, tmp_path):
    from safetensors.torch import load_file

    from apps.medical.model import load_model
    from apps.medical.train import drop_unused_tensors, model_answers, probe_inputs
    from core.bundle import BundleError, sha256_file

    folder, in_memory = trained
    old = old_style_copy(folder, "report_only", in_memory["report_only"], tmp_path / "report_only")
    before_card = json.loads((old / "card.json").read_text())
    before_config = (old / "config.json").read_text()
    before_bytes = (old / "model.safetensors").stat().st_size
    assert own_keys(load_file(old / "model.safetensors"), "ct")

    result = drop_unused_tensors(old, str(tiny_bert_dir), fusion_dir=folder / "fusion", log=lambda m: None)
    keys = set(load_file(old / "model.safetensors"))
    assert keys == set(load_file(folder / "report_only" / "model.safetensors"))  # as the trainer now saves it
    assert result["dropped"] > 0 and result["after"]["bytes"] == (old / "model.safetensors").stat().st_size < before_bytes
    card = json.loads((old / "card.json").read_text())
    assert card["sha256"] == sha256_file(old / "model.safetensors") == result["after"]["sha256"] != before_card["sha256"]
    for field in ("name", "version", "task", "data", "split", "metrics", "reproduce", "limitations", "date", "extra"):
        assert card[field] == before_card[field], field
    assert card["notes"].startswith(before_card["notes"]) and "Unused tensors dropped" in card["notes"]
    assert before_card["sha256"] in card["notes"] and "--drop-unused" in (old / "MODEL_CARD.md").read_text()
    assert (old / "config.json").read_text() == before_config

    fusion, _ = load_model(folder / "fusion", str(tiny_bert_dir))
    loaded, _ = load_model(old, str(tiny_bert_dir), detector_from=fusion, bert_from=fusion)
    ct, report, _ = probe_inputs(loaded, seed=1)
    assert_same_answers(model_answers(in_memory["report_only"], ct, report, "report"),
                        model_answers(loaded, ct, report, "report"))
    # again: nothing left to drop, nothing written
    sha = card["sha256"]
    assert drop_unused_tensors(old, str(tiny_bert_dir), fusion_dir=folder / "fusion", log=lambda m: None)["dropped"] == 0
    assert sha256_file(old / "model.safetensors") == sha
    # the loading checks are those of any bundle: beside the fusion model that holds its detector, weights verified
    with pytest.raises(ValueError, match="without its nodule detector"):
        load_model(old, str(tiny_bert_dir))
    with pytest.raises(ValueError, match="fusion model"):
        drop_unused_tensors(folder / "fusion", str(tiny_bert_dir), log=lambda m: None)
    data = bytearray((old / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (old / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_model(old, str(tiny_bert_dir), detector_from=fusion, bert_from=fusion)


def test_drop_unused_writes_nothing_when_an_answer_would_move(trained, tiny_bert_dir, tmp_path, monkeypatch):
    """Were a module the model reads counted unused (here the heads), the re-saved model would answer otherwise:
    refused, the bundle as it was."""
    from apps.medical import model as medical_model
    from apps.medical.train import drop_unused_tensors
    from core.bundle import sha256_file

    folder, in_memory = trained
    old = old_style_copy(folder, "ct_only", in_memory["ct_only"], tmp_path / "ct_only")
    files = {p.name: p.read_bytes() for p in old.iterdir()}
    unused = medical_model.unused_prefixes
    monkeypatch.setattr(medical_model, "unused_prefixes", lambda config, modalities: (*unused(config, modalities), "net.router."))
    with pytest.raises(RuntimeError, match="answers differently"):
        drop_unused_tensors(old, str(tiny_bert_dir), fusion_dir=folder / "fusion", log=lambda m: None)
    assert {p.name: p.read_bytes() for p in old.iterdir()} == files
    assert json.loads((old / "card.json").read_text())["sha256"] == sha256_file(old / "model.safetensors")


def test_unused_prefixes_name_the_absent_inputs_modules_only():
    from apps.medical.model import MedicalModelConfig, unused_prefixes

    config = MedicalModelConfig.from_name("tiny")
    assert unused_prefixes(config, "both") == ()
    assert set(unused_prefixes(config, "report")) == {*OWN["ct"], "net.fusion.cross.0.blocks.ct."}
    assert set(unused_prefixes(config, "ct")) == {*OWN["report"], "net.fusion.cross.0.blocks.report."}
    with pytest.raises(ValueError, match="modalities"):
        unused_prefixes(config, "ecg")


def test_the_shipped_report_only_bundle_holds_no_ct_branch():
    """The shipped report-only model, re-saved by --drop-unused: its report branch and the shared fusion modules."""
    from safetensors import safe_open

    from apps.medical.settings import SHIPPED_SINGLE_INPUT
    from core.bundle import sha256_file

    folder = SHIPPED_SINGLE_INPUT["report_only_bundle_dir"]
    if not (folder / "model.safetensors").is_file():
        pytest.skip("no shipped report-only bundle in this checkout")
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
    assert json.loads((folder / "config.json").read_text())["modalities"] == "report"
    assert not own_keys(keys, "ct") and not any(k.startswith("detector.") for k in keys)
    assert own_keys(keys, "report") and {"temperature", "bias"} <= set(keys)
    assert json.loads((folder / "card.json").read_text())["sha256"] == sha256_file(folder / "model.safetensors")
    assert (folder / "model.safetensors").stat().st_size < 1_500_000  # was 2,751,616 bytes with the CT branch
