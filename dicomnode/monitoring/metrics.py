"""Scores: segmentation overlap (MONAI), classification (scikit-learn), bootstrap CIs."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "bootstrap_ci",
    "classification_metrics",
    "dice",
    "roc_band",
    "segmentation_metrics",
]

BOOTSTRAP_SEED = 20260101
BOOTSTRAP_RESAMPLES = 1000


def _finite(value: float) -> float | None:
    """``value``, or ``None`` where it is NaN or infinite (an empty mask)."""
    return float(value) if math.isfinite(value) else None


def dice(prediction: NDArray[np.bool_], reference: NDArray[np.bool_]) -> float:
    """The Dice coefficient of two masks of one structure (MONAI's ``DiceMetric``).

    Parameters
    ----------
    prediction, reference : ndarray of bool
        Masks of the same shape.

    Returns
    -------
    float
        ``2 |A and B| / (|A| + |B|)``; 1.0 when both masks are empty (they agree).

    Raises
    ------
    ValueError
        The masks differ in shape.
    """
    import torch
    from monai.metrics.meandice import DiceMetric

    if prediction.shape != reference.shape:
        raise ValueError(f"masks of shapes {prediction.shape} and {reference.shape}")
    pred = torch.from_numpy(prediction.astype(np.float32))[None, None]
    ref = torch.from_numpy(reference.astype(np.float32))[None, None]
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    return float(torch.as_tensor(metric(pred, ref)).item())


def segmentation_metrics(
    prediction: NDArray[np.bool_],
    reference: NDArray[np.bool_],
    spacing: tuple[float, float, float],
    voxel_volume_ml: float,
    tolerance_mm: float,
) -> dict[str, float | None]:
    """Overlap and surface distances of one structure in one study.

    Parameters
    ----------
    prediction, reference : ndarray of bool, (slices, rows, columns)
        The pipeline's mask and the reference mask, in the same grid.
    spacing : (float, float, float)
        Millimetres along the three axes.
    voxel_volume_ml : float
        Volume of one voxel.
    tolerance_mm : float
        Tolerance of the surface Dice.

    Returns
    -------
    dict
        ``dice``, ``hd95_mm``, ``asd_mm`` (symmetric average surface
        distance), ``surface_dice``, ``volume_ml``, ``reference_volume_ml``,
        ``volume_error_ml`` and ``volume_error_pct``; ``None`` where a value
        is undefined (an empty mask).
    """
    import torch
    from monai.metrics.hausdorff_distance import HausdorffDistanceMetric
    from monai.metrics.meandice import DiceMetric
    from monai.metrics.surface_dice import SurfaceDiceMetric
    from monai.metrics.surface_distance import SurfaceDistanceMetric

    pred = torch.from_numpy(prediction.astype(np.float32))[None, None]
    ref = torch.from_numpy(reference.astype(np.float32))[None, None]
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=True)
    hd95 = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
    asd = SurfaceDistanceMetric(include_background=True, symmetric=True, reduction="none")
    nsd = SurfaceDiceMetric(class_thresholds=[tolerance_mm], include_background=True)
    both = bool(prediction.any()) and bool(reference.any())

    def scalar(value: object) -> float | None:
        return _finite(float(torch.as_tensor(value).item()))

    with warnings.catch_warnings():
        # MONAI's own surface helpers pass an argument that MONAI has deprecated
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"monai\.")
        values: dict[str, float | None] = {
            "dice": scalar(dice(pred, ref)),
            "hd95_mm": scalar(hd95(pred, ref, spacing=spacing)) if both else None,
            "asd_mm": scalar(asd(pred, ref, spacing=spacing)) if both else None,
            "surface_dice": scalar(nsd(pred, ref, spacing=spacing)) if both else None,
        }
    predicted_ml = float(prediction.sum()) * voxel_volume_ml
    reference_ml = float(reference.sum()) * voxel_volume_ml
    values["volume_ml"] = predicted_ml
    values["reference_volume_ml"] = reference_ml
    values["volume_error_ml"] = predicted_ml - reference_ml
    values["volume_error_pct"] = (
        100.0 * (predicted_ml - reference_ml) / reference_ml if reference_ml > 0 else None
    )
    return values


def bootstrap_ci(
    samples: Sequence[Any],
    statistic: Callable[[Sequence[Any]], float | None],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float] | None:
    """95 % percentile bootstrap interval of ``statistic`` over ``samples``.

    Resamples (with replacement, fixed seed) on which the statistic is
    undefined (``None``, e.g. an AUC of one class only) are skipped.

    Returns
    -------
    (float, float) or None
        The 2.5th and 97.5th percentiles; ``None`` with fewer than two
        samples or no defined resample.
    """
    if len(samples) < 2:
        return None
    rng = np.random.default_rng(seed)
    values: list[float] = []
    for _ in range(resamples):
        picked = [samples[i] for i in rng.integers(0, len(samples), len(samples))]
        value = statistic(picked)
        if value is not None and math.isfinite(value):
            values.append(value)
    if not values:
        return None
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def mean_of(values: Sequence[float | None]) -> float | None:
    """Mean of the defined values; ``None`` when there are none."""
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _operating(truth: NDArray[np.int_], called: NDArray[np.int_]) -> dict[str, float | None]:
    tp = int(((truth == 1) & (called == 1)).sum())
    tn = int(((truth == 0) & (called == 0)).sum())
    fp = int(((truth == 0) & (called == 1)).sum())
    fn = int(((truth == 1) & (called == 0)).sum())
    return {
        "sensitivity": _rate(tp, tp + fn),
        "specificity": _rate(tn, tn + fp),
        "ppv": _rate(tp, tp + fp),
        "npv": _rate(tn, tn + fn),
    }


def classification_metrics(
    labels: Sequence[int],
    probabilities: Sequence[float],
    threshold: float,
    *,
    with_ci: bool = True,
) -> dict[str, Any]:
    """ROC AUC, operating point, calibration, each with a 95 % bootstrap CI.

    Parameters
    ----------
    labels : sequence of int
        Reference labels, 1 positive, 0 negative.
    probabilities : sequence of float
        The pipeline's probability per study.
    threshold : float
        Probabilities at or above it are called positive.
    with_ci : bool
        Whether to bootstrap the intervals (``ci95`` is ``None`` otherwise).

    Returns
    -------
    dict
        ``n``, ``positives``, ``threshold``, ``auc``, ``sensitivity``,
        ``specificity``, ``ppv``, ``npv``, ``brier`` (each a ``value`` with its
        ``ci95``), ``confusion`` and ``reliability`` (mean predicted
        probability and observed fraction per bin, with both classes present).
    """
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score

    truth = np.asarray(labels, dtype=int)
    scores = np.asarray(probabilities, dtype=float)
    called = (scores >= threshold).astype(int)
    both = len(set(truth.tolist())) == 2
    names = ("auc", "sensitivity", "specificity", "ppv", "npv", "brier")
    tn, fp, fn, tp = (int(x) for x in confusion_matrix(truth, called, labels=[0, 1]).ravel())
    point: dict[str, float | None] = {
        "auc": float(roc_auc_score(truth, scores)) if both else None,
        "sensitivity": _rate(tp, tp + fn),
        "specificity": _rate(tn, tn + fp),
        "ppv": _rate(tp, tp + fp),
        "npv": _rate(tn, tn + fn),
        "brier": float(brier_score_loss(truth, scores)) if len(truth) else None,
    }
    samples: dict[str, list[float]] = {name: [] for name in names}
    if with_ci and len(truth) >= 2:
        rng = np.random.default_rng(BOOTSTRAP_SEED)
        for _ in range(BOOTSTRAP_RESAMPLES):
            index = rng.integers(0, len(truth), len(truth))
            t, p, c = truth[index], scores[index], called[index]
            values = _operating(t, c)
            values["brier"] = float(np.mean((p - t) ** 2))
            if len(set(t.tolist())) == 2:
                values["auc"] = float(roc_auc_score(t, p))
            for name, value in values.items():
                if value is not None:
                    samples[name].append(value)
    out: dict[str, Any] = {"n": len(truth), "positives": int(truth.sum()), "threshold": threshold}
    for name in names:
        kept = samples[name]
        ci = np.percentile(kept, [2.5, 97.5]) if kept else None
        out[name] = {
            "value": point[name],
            "ci95": (float(ci[0]), float(ci[1])) if ci is not None else None,
        }
    out["confusion"] = {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    if both:
        observed, predicted = calibration_curve(truth, scores, n_bins=5)
        out["reliability"] = {
            "mean_predicted": [float(v) for v in predicted],
            "observed_fraction": [float(v) for v in observed],
        }
    return out


def roc_band(
    labels: Sequence[int], probabilities: Sequence[float]
) -> dict[str, list[float]] | None:
    """The ROC curve on a fixed false-positive grid, with a 95 % bootstrap band.

    Returns
    -------
    dict or None
        ``fpr``, ``tpr``, ``tpr_low`` and ``tpr_high`` (equal lengths);
        ``None`` without both classes.
    """
    from sklearn.metrics import roc_curve

    if len(set(labels)) < 2:
        return None
    grid = np.linspace(0.0, 1.0, 51)

    def curve(truth: Sequence[int], scores: Sequence[float]) -> NDArray[np.float64]:
        fpr, tpr, _ = roc_curve(list(truth), list(scores))
        return np.asarray(np.interp(grid, fpr, tpr), dtype=np.float64)

    rng = np.random.default_rng(BOOTSTRAP_SEED)
    curves = []
    truth = np.asarray(labels)
    scores = np.asarray(probabilities)
    for _ in range(BOOTSTRAP_RESAMPLES // 2):
        index = rng.integers(0, len(truth), len(truth))
        if len(set(truth[index].tolist())) == 2:
            curves.append(curve(truth[index].tolist(), scores[index].tolist()))
    main = curve(list(labels), list(probabilities))
    low, high = np.percentile(np.stack(curves), [2.5, 97.5], axis=0) if curves else (main, main)
    return {
        "fpr": grid.tolist(),
        "tpr": main.tolist(),
        "tpr_low": np.asarray(low).tolist(),
        "tpr_high": np.asarray(high).tolist(),
    }
