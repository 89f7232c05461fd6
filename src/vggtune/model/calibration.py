"""Temperature scaling (Guo et al., 2017): one scalar that makes a classifier's probabilities honest.

A fine-tuned network is usually over-confident: of the images it calls 95 % sure, far fewer than
95 % are right. Dividing the logits by a temperature ``T`` fitted on held-out images (minimising
their negative log-likelihood) fixes most of that without changing a single prediction, since the
arg-max of ``logits / T`` is the arg-max of the logits.

The expected calibration error is torchmetrics' ``MulticlassCalibrationError`` (15 equal-width
confidence bins, weighted by their share of the images).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

ECE_BINS = 15
_LOG_T_RANGE = (math.log(0.05), math.log(100.0))  # a temperature outside it means the logits are unusable


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> float | None:
    """The temperature ``T > 0`` that minimises the mean cross-entropy of ``logits / T`` on ``targets``.

    LBFGS over ``log T`` (so ``T`` stays positive) from ``T = 1``, on the CPU in float64. Rows with a
    non-finite logit are left out. With none left, or with every image predicted right (the loss then
    falls without end as ``T`` goes to 0, and a sharper model would only look better on these images),
    None is returned: nothing to fit.
    """
    # Validation runs under no_grad, and trainer.validate under inference_mode: leave both for the fit,
    # with copies of the inputs (inference tensors cannot take part in autograd).
    with torch.inference_mode(False), torch.enable_grad():
        return _fit(logits.detach().double().cpu().clone(), targets.detach().long().cpu().clone(), max_iter)


def _fit(logits: torch.Tensor, targets: torch.Tensor, max_iter: int) -> float | None:
    keep = torch.isfinite(logits).all(dim=1)
    logits, targets = logits[keep], targets[keep]
    if len(logits) == 0 or bool((logits.argmax(dim=1) == targets).all()):
        return None
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    value = float(log_t.detach().clamp(*_LOG_T_RANGE).exp())
    return value if math.isfinite(value) else 1.0


def calibration_error(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error of class probabilities (rows sum to 1) against ``targets``."""
    return float(
        multiclass_calibration_error(probs.float(), targets, num_classes=probs.shape[1], n_bins=bins, norm="l1")
    )


def nll(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean negative log-likelihood of the true class; probabilities are clipped at float64's machine
    epsilon, as scikit-learn's ``log_loss`` does, so that a confident mistake costs 36, not infinity."""
    eps = torch.finfo(torch.float64).eps
    return float(-probs.double().gather(1, targets.long().view(-1, 1)).clamp(eps, 1 - eps).log().mean())


def summarise(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> dict:
    """ECE and NLL of ``softmax(logits)`` and of ``softmax(logits / temperature)``, with the temperature."""
    before, after = logits.float().softmax(dim=1), (logits.float() / temperature).softmax(dim=1)
    return {
        "temperature": temperature,
        "images": len(targets),
        "ece": calibration_error(before, targets),
        "ece_calibrated": calibration_error(after, targets),
        "nll": nll(before, targets),
        "nll_calibrated": nll(after, targets),
        "ece_bins": ECE_BINS,
    }


def reliability_bins(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width confidence bin: its range, images, mean confidence and accuracy (None when empty).

    The same bins as :func:`calibration_error`: ECE is the image-weighted mean of
    ``|accuracy - confidence|`` over these rows.
    """
    confidence, predicted = probs.float().max(dim=1)
    right = (predicted == targets).float()
    edges = torch.linspace(0, 1, bins + 1)
    which = torch.bucketize(confidence, edges[1:-1], right=True)  # bin b holds (edges[b], edges[b + 1]]
    rows = []
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        rows.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "images": n,
                "confidence": float(confidence[inside].mean()) if n else None,
                "accuracy": float(right[inside].mean()) if n else None,
            }
        )
    return rows
