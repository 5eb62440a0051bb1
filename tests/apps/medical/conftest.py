"""Fixtures for the radiology tests: a tiny BERT folder with a locally trained WordPiece tokenizer,
a tiny generated study set in the renderer's layout, and a tiny trained fusion bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

CORPUS = [
    "No nodules or masses. Lungs are clear.",
    "There is a 2 cm spiculated nodule in the right upper lobe.",
    "Former smoker, 40 pack-years. Family history of lung cancer.",
    "Never smoker. A small calcified granuloma is noted.",
    "Heart size normal. No pleural effusion or pneumothorax.",
    "Patient is a 67-year-old with emphysema and chronic cough.",
] * 20


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 1-layer, 16-wide BertModel + WordPiece tokenizer trained here, saved like any local BERT."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert")
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(CORPUS, vocab_size=120, min_frequency=1)
    wordpiece.save_model(str(folder))
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(str(folder))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)  # the same random BERT every run: tests stay deterministic
    BertModel(config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def toy_studies(tmp_path_factory) -> Path:
    from apps.medical.toydata import write_toy_dataset

    return write_toy_dataset(tmp_path_factory.mktemp("toy_studies"), n=12, shape=(16, 24, 24), seed=0)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, toy_studies, tiny_bert_dir) -> tuple[Path, dict]:
    from apps.medical.train import FusionTrainConfig, train_fusion

    out = tmp_path_factory.mktemp("bundle") / "fusion"
    _, metrics = train_fusion(toy_studies, out, FusionTrainConfig.from_name("tiny"), patients=(1, 800),
                              bert_path=str(tiny_bert_dir), log=lambda m: None)
    return out, metrics


@pytest.fixture(scope="session")
def dicom_errors():
    """dciodvfy (dicom3tools, installed by `make test`) on DICOM bytes -> its Error lines (the IOD's
    required attributes, their values, the SR tree); skips where it is not installed."""
    import shutil
    import subprocess
    import tempfile

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")

    def check(data: bytes) -> list[str]:
        with tempfile.NamedTemporaryFile(suffix=".dcm") as f:
            f.write(data)
            f.flush()
            out = subprocess.run(["dciodvfy", f.name], capture_output=True, text=True, timeout=60, check=False)
        return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]

    return check
