"""acodm.gram: W_i = <g_i, Σ_j g_j> and its self-term-free form against a direct computation from random
gradients, and the three users (alignment, DoGE, AC-ODM) reading it from the one implementation."""

import numpy as np
import pytest

from acodm import alignment
from acodm.gram import alignment_scores, mean_gradient_norm
from acodm.mixers.acodm import alignment_reward
from acodm.mixers.doge import doge_scores
from acodm.state import zscore


@pytest.mark.parametrize("seed", range(5))
def test_scores_match_direct_computation(seed):
    rng = np.random.default_rng(seed)
    k, d = 6, 40
    g_KD = rng.normal(size=(k, d)) * rng.uniform(0.1, 3.0, size=(k, 1))  # per-domain gradients
    gram = g_KD @ g_KD.T
    total_D = g_KD.sum(axis=0)
    w = np.array([g_KD[i] @ total_D for i in range(k)])
    w_no_self = np.array([g_KD[i] @ (total_D - g_KD[i]) for i in range(k)])
    mean_norm = np.mean(np.linalg.norm(g_KD, axis=1))
    np.testing.assert_allclose(alignment_scores(gram), w, rtol=1e-10)
    np.testing.assert_allclose(alignment_scores(gram, exclude_self=True), w_no_self, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(alignment_scores(gram, exclude_self=True, normalize=True), w_no_self / mean_norm,
                               rtol=1e-9, atol=1e-9)
    assert mean_gradient_norm(gram) == pytest.approx(mean_norm, rel=1e-12)

    # Absent domains: their gradients are left out of every sum and they score 0, even with NaN rows.
    present = rng.uniform(size=k) < 0.6
    present[0] = True
    g_present = np.where(present[:, None], g_KD, 0.0)
    total_present = g_present.sum(axis=0)
    w_present = np.array([g_present[i] @ total_present for i in range(k)])
    w_present_no_self = np.array([g_present[i] @ (total_present - g_present[i]) for i in range(k)])
    poisoned = gram.copy()
    poisoned[~present, :] = np.nan
    poisoned[:, ~present] = np.nan
    np.testing.assert_allclose(alignment_scores(poisoned, present=present), w_present, rtol=1e-10)
    np.testing.assert_allclose(alignment_scores(poisoned, exclude_self=True, present=present), w_present_no_self,
                               rtol=1e-9, atol=1e-9)
    norms = np.linalg.norm(g_KD, axis=1)
    assert mean_gradient_norm(poisoned, present) == pytest.approx(norms[present].mean(), rel=1e-12)
    np.testing.assert_allclose(alignment_scores(poisoned, normalize=True, present=present),
                               w_present / norms[present].mean(), rtol=1e-10)


def test_edge_cases():
    assert mean_gradient_norm(np.eye(3), np.zeros(3, bool)) == 0.0
    np.testing.assert_array_equal(alignment_scores(np.zeros((3, 3)), normalize=True), np.zeros(3))
    with pytest.raises(ValueError, match="square"):
        alignment_scores(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="present"):
        alignment_scores(np.eye(3), present=np.ones(2, bool))


def test_users_read_the_one_implementation():
    rng = np.random.default_rng(7)
    g_KD = rng.normal(size=(4, 9))
    gram = g_KD @ g_KD.T
    present = np.array([True, True, False, True])
    sub = gram[np.ix_(present, present)]
    assert alignment.alignment_scores is alignment_scores
    np.testing.assert_array_equal(doge_scores(gram, present, exclude_self=True, normalize_by_mean_norm=True),
                                  alignment_scores(gram, exclude_self=True, present=present)
                                  / (mean_gradient_norm(gram, present) + 1e-6))
    action = np.array([0.1, 0.2, 0.3, 0.4])
    linear = alignment_reward(gram, present, action, "linear")[0]
    assert linear == pytest.approx(action[present] @ alignment_scores(sub) / np.mean(np.diag(sub)), rel=1e-12)
    paper = alignment_reward(gram, present, action, "paper")
    np.testing.assert_allclose(paper[present], zscore(alignment_scores(sub, exclude_self=True)
                                                      / mean_gradient_norm(sub)), rtol=1e-12)
    assert paper[~present] == 0.0
