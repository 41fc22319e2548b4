"""Scores read off a per-domain gradient Gram matrix G_ij = ⟨g_i, g_j⟩ (numpy only).

The one implementation of the gradient-alignment score that DoGE and AC-ODM share (docs/methods.md,
"Gradient alignment"):

    W_i = ⟨g_i, Σ_j g_j⟩ = Σ_j G_ij                  (DoGE's score, AC-ODM's ``linear`` reward before scaling)
    W_i − G_ii = ⟨g_i, Σ_{j≠i} g_j⟩                   (``exclude_self``: AC-ODM's ``paper`` reward before z-scoring)

The self term G_ii = ‖g_i‖² is the part of W_i that sampling noise inflates (it grows like noise/n_i at a
few sequences per domain), which is why both forms exist. Callers restrict the Gram to the domains present
in the step either by slicing it or by passing ``present`` (rows and columns of the others are zeroed); the
normalisations differ between methods (DoGE adds 1e-6, AC-ODM's linear reward divides by the mean ‖g_k‖²),
so they stay with the callers, which share ``mean_gradient_norm``.
"""

from __future__ import annotations

import numpy as np


def alignment_scores(gram: np.ndarray, exclude_self: bool = False, normalize: bool = False,
                     present: np.ndarray | None = None) -> np.ndarray:
    """(K,) W_i = ⟨g_i, Σ_j g_j⟩ from the (K, K) Gram matrix.

    ``exclude_self``: drop the diagonal, W_i = ⟨g_i, Σ_{j≠i} g_j⟩.
    ``present``: (K,) bool; when given, rows and columns of the other domains are zeroed before the sums
    (a NaN there does not spread) and their scores are 0.
    ``normalize``: divide by the mean ‖g_k‖ over the (present) domains with a positive diagonal; all
    scores are 0 when there is none.
    """
    gram = np.asarray(gram, dtype=np.float64)
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be a square (K, K) matrix, got shape {gram.shape}")
    if present is not None:
        present = np.asarray(present, dtype=bool)
        if present.shape != (gram.shape[0],):
            raise ValueError(f"present must be a ({gram.shape[0]},) bool mask, got shape {present.shape}")
        gram = np.where(np.outer(present, present), gram, 0.0)  # (K, K)
    w = gram.sum(axis=1)  # (K,) Σ_j G_ij
    if exclude_self:
        w = w - np.diag(gram)
    if normalize:
        diag = np.diag(gram)
        counted = diag > 0 if present is None else (diag > 0) & present
        mean_norm = mean_gradient_norm(gram, counted)
        w = w / mean_norm if mean_norm > 0 else np.zeros_like(w)
    return w if present is None else np.where(present, w, 0.0)


def mean_gradient_norm(gram: np.ndarray, present: np.ndarray | None = None) -> float:
    """mean_k ‖g_k‖ = mean_k sqrt(max(G_kk, 0)) over the ``present`` domains (all when None); 0.0 if none."""
    diag = np.diag(np.asarray(gram, dtype=np.float64))
    if present is not None:
        present = np.asarray(present, dtype=bool)
        if not present.any():
            return 0.0
        diag = diag[present]
    return float(np.mean(np.sqrt(np.maximum(diag, 0.0))))
