"""Static, DoGE and DoReMi against hand-computed updates."""

import json

import numpy as np
import pytest

from acodm.mixers import StepStats, build_mixer

DOMAINS = ["a", "b", "c"]


def make_stats(step, gram=None, excess=None, tokens=(100.0, 100.0, 100.0)):
    tokens = np.asarray(tokens, dtype=np.float64)
    return StepStats(step=step, total_steps=50, loss_sum=2.0 * tokens, token_count=tokens, sample_count=tokens / 10,
                     gram=None if gram is None else np.asarray(gram, dtype=np.float64),
                     excess_loss_sum=None if excess is None else np.asarray(excess, dtype=np.float64))  # fmt: skip


def test_static_kinds(tmp_path):
    assert np.allclose(build_mixer("static", DOMAINS, 10, 0).weights(), 1 / 3)
    w = build_mixer("static", DOMAINS, 10, 0, kind="natural", weights={"a": 2, "b": 1, "c": 1}).weights()
    np.testing.assert_allclose(w, [0.5, 0.25, 0.25])
    sizes = {"a": 400.0, "b": 100.0, "c": 100.0}
    w = build_mixer("static", DOMAINS, 10, 0, kind="temperature", domain_sizes=sizes, alpha=0.5).weights()
    np.testing.assert_allclose(w, np.array([20.0, 10.0, 10.0]) / 40.0)
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"a": 1, "b": 3, "c": 0}))
    w = build_mixer("static", DOMAINS, 10, 0, kind="file", path=str(path), floor=0.01).weights()
    np.testing.assert_allclose(w, 0.01 + 0.97 * np.array([0.25, 0.75, 0.0]))
    ymlpath = tmp_path / "w.yml"
    ymlpath.write_text("a: 1\nb: 1\nc: 2\n")
    np.testing.assert_allclose(build_mixer("static", DOMAINS, 10, 0, kind="file", path=str(ymlpath)).weights(),
                               [0.25, 0.25, 0.5])  # fmt: skip
    with pytest.raises(ValueError, match="domain_sizes"):
        build_mixer("static", DOMAINS, 10, 0, kind="temperature")


def test_doge_update_by_hand():
    gram = np.array([[4.0, 1.0, 0.5], [1.0, 2.0, -0.2], [0.5, -0.2, 1.0]])
    lr, mu = 0.1, 0.5
    mixer = build_mixer("doge", DOMAINS, 50, 0, lr=lr, mu=mu, floor=0.0, clip_scores=True)
    log_w = np.log(np.full(3, 1 / 3))
    for t in range(1, 4):
        mixer.observe(make_stats(t, gram))
        # [5.5, 2.8, 1.3] / mean gradient norm (the reference always normalises; norms < 5: no clipping)
        w_scores = gram.sum(axis=1) / (np.mean([2.0, np.sqrt(2.0), 1.0]) + 1e-6)
        log_w = log_w + np.clip(lr * w_scores, 0, 5 * lr) / mu
        expected = np.exp(log_w) / np.exp(log_w).sum()
        log_w = np.log(expected)
        np.testing.assert_allclose(mixer.weights(), expected, atol=1e-12)
    assert mixer.weights()[0] > mixer.weights()[1] > mixer.weights()[2]
    # time average over the three produced weight vectors
    assert np.all(np.isfinite(mixer.average_weights())) and abs(mixer.average_weights().sum() - 1) < 1e-12


def test_doge_exclude_self_and_normalize():
    gram = np.array([[9.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 4.0]])
    lr, mu = 1e-3, 0.01
    mixer = build_mixer("doge", DOMAINS, 50, 0, lr=lr, mu=mu, floor=0.0, clip_scores=False,
                        exclude_self=True, normalize_by_mean_norm=True)  # fmt: skip
    mixer.observe(make_stats(1, gram))
    w = np.array([1.0, 2.0, 1.0]) / np.mean([3.0, 1.0, 2.0])  # off-diagonal row sums / mean ||g_k||
    expected = np.exp(lr * w / mu) / np.exp(lr * w / mu).sum()
    np.testing.assert_allclose(mixer.weights(), expected, atol=1e-12)


def test_doge_skips_bad_gram():
    mixer = build_mixer("doge", DOMAINS, 50, 0)
    before = mixer.weights()
    metrics = mixer.observe(make_stats(1, [[1, np.nan, 0], [np.nan, 1, 0], [0, 0, 1]]))
    assert metrics["mixer/skipped"] == 1 and np.array_equal(mixer.weights(), before)
    metrics = mixer.observe(make_stats(2, None))
    assert metrics["mixer/skipped"] == 1


def test_doremi_update_by_hand():
    eta, c = 1.0, 1e-3
    mixer = build_mixer("doremi", DOMAINS, 50, 0, lr=eta, smoothing=c, vocab_size=4096)
    tokens = np.array([100.0, 50.0, 0.0])  # domain c absent: keeps its initial score ln|V|
    excess_sum = np.array([30.0, 5.0, 0.0])
    alpha = np.full(3, 1 / 3)
    history = [alpha]  # the reference's average starts from the initial weights
    for t in range(1, 4):
        mixer.observe(make_stats(t, excess=excess_sum, tokens=tokens))
        lam = np.array([0.3, 0.1, np.log(4096)])
        a_prime = alpha * np.exp(eta * lam)
        alpha = (1 - c) * a_prime / a_prime.sum() + c / 3
        history.append(alpha)
        np.testing.assert_allclose(mixer.weights(), alpha, atol=1e-12)
    np.testing.assert_allclose(mixer.average_weights(), np.mean(history, axis=0), atol=1e-12)
    # this project's earlier form: absent domains score 0 for the step
    zero = build_mixer("doremi", DOMAINS, 50, 0, lr=eta, smoothing=c, absent_domains="zero")
    zero.observe(make_stats(1, excess=excess_sum, tokens=tokens))
    a_prime = np.exp(eta * np.array([0.3, 0.1, 0.0]))
    np.testing.assert_allclose(zero.weights(), (1 - c) * a_prime / a_prime.sum() + c / 3, atol=1e-12)
    assert mixer.needs.reference_losses and not mixer.needs.alignment
