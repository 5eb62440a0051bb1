import pytest
import torch

from apps.medical.encoders import BertReportEncoder, CTEncoderConfig, CTResNetEncoder
from core.encoders import create_encoder, list_encoders


def test_registered_in_core_registry():
    assert ("ct", "resnet3d") in list_encoders("ct")
    assert ("text", "bert") in list_encoders("text")


def test_ct_encoder_gives_study_vector_and_spatial_tokens():
    encoder = CTResNetEncoder(CTEncoderConfig.from_name("tiny", dim=128))
    out = encoder(torch.rand(2, 1, 16, 32, 32))
    assert out.tokens.shape[0] == 2 and out.tokens.shape[2] == 128
    assert out.tokens.shape[1] > 1 and out.mask.all()  # study token + at least one spatial cell
    assert encoder.eval().study_vector(torch.rand(1, 1, 16, 32, 32)).shape == (1, 128)
    assert encoder.feature_map is not None and encoder.feature_map.dim() == 5


def test_ct_encoder_default_is_128d_and_rejects_bad_shapes():
    assert CTEncoderConfig().dim == 128
    encoder = create_encoder("ct", "resnet3d", config=CTEncoderConfig.from_name("tiny"))
    with pytest.raises(ValueError, match="B, 1, D, H, W"):
        encoder(torch.rand(2, 16, 32, 32))


def test_bert_path_loads_a_local_bert_with_its_tokenizer(tiny_bert_dir):
    encoder = BertReportEncoder(path=str(tiny_bert_dir), max_length=24)
    batch = encoder.tokenize(["No nodules or masses.", "Former smoker, 40 pack-years. A 2 cm nodule, right upper lobe."])
    assert batch["input_ids"].dim() == 3 and batch["input_ids"].shape[0] == 2
    out = encoder(batch)
    assert out.tokens.shape[:2] == batch["input_ids"].shape[:2] and out.tokens.shape[2] == encoder.dim == 16
    assert out.mask.sum(1).tolist() == [1, 4]  # one token per clause; padding clauses masked
    assert torch.all(out.tokens[0, 1:] == 0)
    assert not any(p.requires_grad for p in encoder.bert.parameters())  # frozen by default
    hidden, segment_mask = encoder.embed(batch)
    cached = encoder({"hidden": hidden, "segment_mask": segment_mask})
    assert torch.allclose(cached.tokens, out.tokens)


def test_clause_splitting():
    from apps.medical.encoders import split_segments

    parts = split_segments("CLINICAL HISTORY: 66-year-old woman, former smoker. FINDINGS: Nodule.", 10)
    assert parts == ["CLINICAL HISTORY:", "66-year-old woman", "former smoker.", "FINDINGS:", "Nodule."]
    assert split_segments("", 4) == [""] and len(split_segments("a, b, c, d, e", 3)) == 3


def test_unfrozen_bert_gets_gradients(tiny_bert_dir):
    encoder = BertReportEncoder(path=str(tiny_bert_dir), freeze=False)
    encoder.train()
    out = encoder(encoder.tokenize(["a nodule"]))
    out.tokens.sum().backward()
    assert any(p.grad is not None for p in encoder.bert.parameters())


def test_blob_features_respond_to_a_nodule_in_lung_not_to_empty_lung():
    from apps.medical.encoders import BlobFeatures

    lung = torch.full((2, 1, 24, 32, 32), 0.07)
    lung[1, 0, 10:15, 14:19, 14:19] = 0.73  # a 5-voxel solid nodule in the second volume
    feats = BlobFeatures()(lung)
    assert feats.shape == (2, BlobFeatures.out_dim)
    assert torch.all(feats[1, :-1] >= feats[0, :-1]) and feats[1, 0] > feats[0, 0] + 1
    encoder = CTResNetEncoder(CTEncoderConfig.from_name("tiny", blob_features=True))
    assert encoder(lung).tokens.shape[1] == encoder(lung[:, :, :, :, :]).tokens.shape[1] >= 3  # study + blob + cells
