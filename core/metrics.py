"""Metrics on maintained libraries (scikit-learn, jiwer) plus retrieval metrics for paired embeddings."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch


def expected_calibration_error(y_true: np.ndarray, probabilities: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim == 1:  # binary: probability of class 1
        probabilities = np.stack([1 - probabilities, probabilities], axis=1)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == np.asarray(y_true)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    error = 0.0
    for low, high in itertools.pairwise(edges):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    probabilities: np.ndarray,
    labels: Sequence[int] | None = None,
) -> dict[str, float | list]:
    """accuracy, macro_f1, uar (unweighted average recall), roc_auc, pr_auc, ece, confusion matrix.

    ``probabilities`` is (N, C) or, for binary problems, (N,) holding P(class 1). AUCs are
    one-vs-rest macro averages over the classes present in ``y_true``; they are NaN when undefined.
    """
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        roc_auc_score,
    )

    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    binary = probabilities.ndim == 1
    predictions = (probabilities >= 0.5).astype(int) if binary else probabilities.argmax(axis=1)
    labels = list(labels) if labels is not None else sorted(set(y_true.tolist()) | set(predictions.tolist()))
    result: dict[str, float | list] = {
        "accuracy": float(accuracy_score(y_true, predictions)),
        "macro_f1": float(f1_score(y_true, predictions, labels=labels, average="macro", zero_division=0)),
        "uar": float(balanced_accuracy_score(y_true, predictions)),
        "ece": expected_calibration_error(y_true, probabilities),
        "confusion_matrix": confusion_matrix(y_true, predictions, labels=labels).tolist(),
    }
    present = sorted(set(y_true.tolist()))
    if len(present) < 2:
        result["roc_auc"] = result["pr_auc"] = float("nan")
    elif binary:
        result["roc_auc"] = float(roc_auc_score(y_true, probabilities))
        result["pr_auc"] = float(average_precision_score(y_true, probabilities))
    else:
        onehot = (y_true[:, None] == np.asarray(present)[None, :]).astype(int)
        scores = probabilities[:, present]
        result["roc_auc"] = float(roc_auc_score(onehot, scores, average="macro"))
        result["pr_auc"] = float(average_precision_score(onehot, scores, average="macro"))
    return result


def similarity_ranks(similarity: torch.Tensor | np.ndarray) -> np.ndarray:
    """1-based rank of the true match (the diagonal) in each row of a (N, N) similarity matrix."""
    sim = torch.as_tensor(similarity, dtype=torch.float64)
    true_scores = sim.diagonal().unsqueeze(1)
    # Ties count against the model so a constant embedding cannot look perfect.
    return ((sim > true_scores).sum(dim=1) + (sim == true_scores).sum(dim=1)).numpy()


def recall_at_k(similarity: torch.Tensor | np.ndarray, k: int) -> float:
    return float((similarity_ranks(similarity) <= k).mean())


def median_rank(similarity: torch.Tensor | np.ndarray) -> float:
    return float(np.median(similarity_ranks(similarity)))


def retrieval_metrics(a: torch.Tensor, b: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K both ways and median rank for paired embeddings (row i of a matches row i of b)."""
    a = torch.nn.functional.normalize(a.float(), dim=-1)
    b = torch.nn.functional.normalize(b.float(), dim=-1)
    sim = a @ b.T
    result = {}
    for k in ks:
        result[f"recall@{k}_a2b"] = recall_at_k(sim, k)
        result[f"recall@{k}_b2a"] = recall_at_k(sim.T, k)
    result["median_rank_a2b"] = median_rank(sim)
    result["median_rank_b2a"] = median_rank(sim.T)
    return result


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    import jiwer

    return float(jiwer.wer(list(references), list(hypotheses)))
