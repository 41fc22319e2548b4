"""Parity of the baselines with the released reference code, on identical inputs.

Each test re-states the reference formula in a few lines (read from the authors' repositories, not
copied) and runs it side by side with our mixer. Commits read: Olivia-fsm/DoGE 88400e9,
sangmichaelxie/doremi 7cde52d, alon-albalak/online-data-mixing edbfdad, DANG-ai/AC-ODM e95863e.
"""

import math

import numpy as np
import pytest
import torch

from acodm.mixers import StepStats, build_mixer
from acodm.mixers.base import is_valid_weights
from acodm.state import StateBuilder, StateSpec, zscore

K = 4
DOMAINS = [f"d{i}" for i in range(K)]


def stats(step, tokens, loss_mean=None, gram=None, excess_sum=None, lr=None, total=100):
    tokens = np.asarray(tokens, dtype=np.float64)
    loss_mean = np.full(len(tokens), 2.0) if loss_mean is None else np.asarray(loss_mean, dtype=np.float64)
    return StepStats(step=step, total_steps=total, loss_sum=np.where(tokens > 0, loss_mean * tokens, 0.0),
                     token_count=tokens, sample_count=tokens / 16, gram=gram, excess_loss_sum=excess_sum,
                     lr=lr)  # fmt: skip


# ---- DoGE -----------------------------------------------------------------------------------------


class DoGEReference:
    """Olivia-fsm/DoGE src/trainer.py L719-L767 (update_domain_weights_distributed), train = target."""

    def __init__(self, k, dim, mu=0.01, max_grad_norm=5.0, dw_min=0.0, dw_max=5.0):
        self.flat_grad_mat = torch.zeros(k, dim, dtype=torch.float64)  # L418: never-seen rows are 0
        self.train_dw = torch.full((k,), 1.0 / k, dtype=torch.float64)
        self.mu, self.max_grad_norm, self.dw_min, self.dw_max = mu, max_grad_norm, dw_min, dw_max

    def step(self, grads, present, lr_t):
        for i in np.flatnonzero(present):  # L722-L737: only present domains overwrite their row
            p = torch.nn.Parameter(torch.zeros(grads.shape[1], dtype=torch.float64))
            p.grad = torch.as_tensor(grads[i], dtype=torch.float64).clone()
            torch.nn.utils.clip_grad_norm_([p], self.max_grad_norm)  # L733-L734
            self.flat_grad_mat[i] = p.grad
        train_mat = self.flat_grad_mat
        scores_mat = train_mat @ train_mat.T  # L746-L748
        scores = lr_t * scores_mat.sum(dim=-1)  # L756 (L753's branch is never taken, see the test)
        avg_norm = train_mat.norm(dim=-1).mean()  # L758-L759
        scores = scores / (avg_norm + 1e-6)
        scores = torch.clip(scores, min=lr_t * self.dw_min, max=lr_t * self.dw_max)  # L760
        log_dw_new = torch.log(self.train_dw) + scores / self.mu  # L762-L764
        self.train_dw = torch.nn.functional.softmax(log_dw_new, dim=-1)
        return self.train_dw.numpy()


def test_doge_self_term_branch_is_never_taken():
    """Olivia-fsm/DoGE src/trainer.py L753-L756: ``set(train_ids) == set(tgt_ids)`` on 1-D tensors
    compares sets of 0-d tensors, which hash by identity, so it is False even for the same ids and the
    score keeps the self term (our default ``exclude_self=False``)."""
    ids = torch.tensor([0, 1, 2])
    assert set(ids) != set(torch.tensor([0, 1, 2])) and set(ids) != set(ids)


def test_doge_matches_reference_all_present():
    """Olivia-fsm/DoGE src/trainer.py L719-L767: clip each domain gradient to 5.0 (L733-L734), scores
    lr_t·Σ_j⟨g_i, g_j⟩ / (mean‖g‖ + 1e-6) clipped to [0, 5 lr_t] (L750-L760), mirror step with μ (L762-L764);
    lr_t the scheduled rate of the step (L750), here StepStats.lr."""
    rng = np.random.default_rng(0)
    dim = 7
    ref = DoGEReference(K, dim)
    mixer = build_mixer("doge", DOMAINS, 100, 0, mu=0.01, floor=0.0)
    for t in range(1, 13):
        grads = rng.normal(size=(K, dim)) * rng.uniform(0.5, 4.0, size=(K, 1))  # some norms above 5: clipped
        lr_t = 1e-3 * (0.5 + 0.5 * math.cos(math.pi * t / 12))  # a decaying schedule
        expected = ref.step(grads, np.ones(K, dtype=bool), lr_t)
        mixer.observe(stats(t, [64.0] * K, gram=grads @ grads.T, lr=lr_t))
        np.testing.assert_allclose(mixer.weights(), expected, rtol=0, atol=1e-12)
    assert np.ptp(mixer.weights()) > 1e-3  # the weights moved: the comparison had something to check


def test_doge_absent_domains_keep_their_last_rows():
    """Olivia-fsm/DoGE src/trainer.py L725-L744 keep an absent domain's last gradient row in
    flat_grad_mat and L746-L759 use it in every score and in the mean norm. With gradients that do not
    change between steps, keeping the last Gram entries is exactly that; ``absent_domains="zero"``
    (this project's earlier form) is not."""
    rng = np.random.default_rng(1)
    dim = 5
    grads = rng.normal(size=(K, dim)) * np.array([[1.0], [3.0], [8.0], [0.5]])  # fixed over time
    ref = DoGEReference(K, dim)
    mixer = build_mixer("doge", DOMAINS, 100, 0, floor=0.0, lr=1e-3)
    zero = build_mixer("doge", DOMAINS, 100, 0, floor=0.0, lr=1e-3, absent_domains="zero")
    differs = False
    for t in range(1, 15):
        present = np.ones(K, dtype=bool) if t in (1, 2) else rng.random(K) < 0.6
        present[rng.integers(K)] = True
        masked = np.where(np.outer(present, present), grads @ grads.T, 0.0)  # absent rows/cols are 0
        tokens = np.where(present, 64.0, 0.0)
        expected = ref.step(grads, present, 1e-3)
        mixer.observe(stats(t, tokens, gram=masked))
        zero.observe(stats(t, tokens, gram=masked))
        np.testing.assert_allclose(mixer.weights(), expected, rtol=0, atol=1e-12)
        differs |= not np.allclose(zero.weights(), expected, atol=1e-6)
    assert differs and np.ptp(mixer.weights()) > 1e-3


def test_doge_lr_falls_back_to_config_and_skips_bad_lr():
    """Olivia-fsm/DoGE src/trainer.py L750: lr_t from the scheduler; without one the reference uses a
    constant. Here StepStats.lr = None means DoGEConfig.lr; a non-finite or negative lr skips the step."""
    g = np.array([[4.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    a = build_mixer("doge", DOMAINS, 100, 0, lr=0.02, floor=0.0)
    b = build_mixer("doge", DOMAINS, 100, 0, lr=1.0, floor=0.0)
    a.observe(stats(1, [64.0] * K, gram=g))
    b.observe(stats(1, [64.0] * K, gram=g, lr=0.02))
    np.testing.assert_allclose(a.weights(), b.weights(), atol=1e-15)
    for bad in (math.nan, math.inf, -1.0):
        before = b.weights()
        metrics = b.observe(stats(2, [64.0] * K, gram=g, lr=bad))
        assert metrics["mixer/skipped"] == 1 and np.array_equal(b.weights(), before)


# ---- DoReMi ---------------------------------------------------------------------------------------


class DoReMiReference:
    """sangmichaelxie/doremi doremi/trainer.py L157-L160, L246-L260; doremi/train.py L270-L274."""

    def __init__(self, initial, vocab_size, eta=1.0, eps=1e-3):
        self.train_domain_weights = torch.as_tensor(initial / initial.sum(), dtype=torch.float64)
        self.avg_domain_weights = self.train_domain_weights.clone()  # train.py L272
        self.perdomain_scores = torch.ones(len(initial), dtype=torch.float64) * np.log(vocab_size)  # L273
        self.update_counter = 1  # train.py L274
        self.eta, self.eps = eta, eps

    def step(self, pertoken_excess, domain_ids):
        scores = []
        for domain_id in range(len(self.train_domain_weights)):
            mask = domain_ids == domain_id
            if mask.sum() > 0:  # trainer.py L251-L254
                scores.append(torch.clip(pertoken_excess[mask], min=0).mean())
            else:
                scores.append(self.perdomain_scores[domain_id])
        self.perdomain_scores = torch.stack([torch.as_tensor(s, dtype=torch.float64) for s in scores])
        log_w = torch.log(self.train_domain_weights) + self.eta * self.perdomain_scores  # L257
        log_w = log_w - torch.logsumexp(log_w, dim=0)  # L258
        w = (1 - self.eps) * torch.exp(log_w) + self.eps / len(log_w)  # L259
        self.update_counter += 1  # write_weights, L157-L160
        self.train_domain_weights = w
        self.avg_domain_weights = (self.avg_domain_weights * (self.update_counter - 1) + w) / self.update_counter
        return w.numpy(), self.avg_domain_weights.numpy()


def test_doremi_matches_reference():
    """sangmichaelxie/doremi doremi/trainer.py L246-L260 (λ = mean of clip(ℓ_θ − ℓ_ref, 0) over a domain's
    tokens, absent domains reuse their last λ, starting at ln|V|: doremi/train.py L273) and the average
    weights including the initial ones (doremi/train.py L272, L274; doremi/trainer.py L157-L160)."""
    rng = np.random.default_rng(2)
    initial = np.array([0.4, 0.3, 0.2, 0.1])
    vocab = 4096
    ref = DoReMiReference(initial, vocab)
    mixer = build_mixer("doremi", DOMAINS, 100, 0, vocab_size=vocab, lr=1.0, smoothing=1e-3,
                        initial_weights=dict(zip(DOMAINS, initial)))  # fmt: skip
    for t in range(1, 11):
        present = rng.random(K) < 0.6
        tokens_per = np.where(present, rng.integers(5, 40, size=K), 0)
        domain_ids = np.repeat(np.arange(K), tokens_per)
        excess = rng.normal(0.1, 0.5, size=len(domain_ids))  # per token ℓ_θ − ℓ_ref, some negative
        w, avg = ref.step(torch.as_tensor(excess), torch.as_tensor(domain_ids))
        excess_sum = np.array([np.maximum(excess[domain_ids == k], 0).sum() for k in range(K)])
        mixer.observe(stats(t, tokens_per.astype(float), excess_sum=excess_sum))
        np.testing.assert_allclose(mixer.weights(), w, rtol=0, atol=1e-12)
        np.testing.assert_allclose(mixer.average_weights(), avg, rtol=0, atol=1e-12)


def test_doremi_initial_score_option():
    """sangmichaelxie/doremi doremi/train.py L273: the initial score is ln(len(tokenizer));
    ``initial_excess_loss`` sets it directly."""
    a = build_mixer("doremi", DOMAINS, 100, 0, vocab_size=50277)
    b = build_mixer("doremi", DOMAINS, 100, 0, initial_excess_loss=math.log(50277))
    for m in (a, b):
        m.observe(stats(1, [10.0, 0.0, 0.0, 0.0], excess_sum=np.array([1.0, 0.0, 0.0, 0.0])))
    np.testing.assert_allclose(a.weights(), b.weights(), atol=1e-15)
    assert a.weights()[0] < a.weights()[1]  # unseen domains (ln|V| ≈ 10.8) outrank a seen one (0.1)
    with pytest.raises(ValueError, match="vocab_size"):
        build_mixer("doremi", DOMAINS, 100, 0, vocab_size=1)


# ---- ODM --------------------------------------------------------------------------------------------


class SmoothedMeanReference:
    """alon-albalak/online-data-mixing megatron/data/data_sampling_utils.py L455-L528
    (SmoothedMeanWeightUpdater) behind DynamicDataSamplingWeight / UpdateScheduler (L296-L320)."""

    def __init__(self, weights, smoothing_factor, warmup_steps):
        k = len(weights)
        self.k, self.alpha, self.warmup_steps = k, smoothing_factor, warmup_steps
        self.weights = list(weights)  # what the sampler draws with (DynamicDataSamplingWeight.weights)
        self._estimated_reward = [0.0] * k  # L466
        self.eps, self.prev_eps = 1 / k, None  # L469-L470

    def group_update(self, iteration, present, rewards):
        if not iteration > self.warmup_steps:  # requires_update, L319-L320 (update_frequency 1)
            return
        self.prev_eps = self.eps  # L503-L504
        self.eps = min(1 / self.k, math.sqrt(math.log(self.k) / (self.k * iteration)))
        for i in np.flatnonzero(present):  # L507-L511
            self._estimated_reward[i] = self.alpha * self._estimated_reward[i] + (1 - self.alpha) * math.exp(rewards[i])
        total = sum(r * self.prev_eps for r in self._estimated_reward)  # L515-L516
        scaling = (1 - self.k * self.eps) / total
        w = [r * self.prev_eps * scaling + self.eps for r in self._estimated_reward]  # L519-L521
        self.weights = [x / sum(w) for x in w]  # L524-L526


@pytest.mark.parametrize("warmup", [0, 3])
def test_odm_smoothed_mean_matches_reference(warmup):
    """alon-albalak/online-data-mixing megatron/data/data_sampling_utils.py L501-L528 (R̂ from 0, linear
    normalisation with ε = ε(iteration)) called as megatron/training.py L1242 then L1267 (iteration
    incremented before the update), no updates while iteration <= warm-up (L319-L320)."""
    rng = np.random.default_rng(3)
    initial = np.array([0.4, 0.3, 0.2, 0.1])
    ref = SmoothedMeanReference(initial, 0.5, warmup)
    mixer = build_mixer("odm", DOMAINS, 100, 0, variant="smoothed_mean", alpha=0.5, warmup_steps=warmup,
                        floor=0.0, initial_weights=dict(zip(DOMAINS, initial)))  # fmt: skip
    for t in range(1, 16):
        np.testing.assert_allclose(mixer.weights(), ref.weights, rtol=0, atol=1e-12)
        present = rng.random(K) < 0.7
        losses = rng.uniform(1.0, 5.0, size=K)
        mixer.observe(stats(t, np.where(present, 64.0, 0.0), loss_mean=np.where(present, losses, np.nan)))
        ref.group_update(t, present, losses)
    np.testing.assert_allclose(mixer.weights(), ref.weights, rtol=0, atol=1e-12)


def test_odm_exp3_epsilon_indexing_matches_reference():
    """alon-albalak/online-data-mixing megatron/data/data_sampling_utils.py L421-L440
    (Exp3WeightUpdater.group_update): ε_prev is the ε of the previous update (1/K before any, L370-L371),
    ε = ε(iteration) of the completed step, π = (1 − Kε)·exp(ε_prev R̂)/Σ + ε; warm-up as L319-L320.
    The reward accumulation is the paper's smoothed L/π (the released code sums (L/10)/π instead; see
    acodm/mixers/odm.py), so this checks the indexing, not that line."""
    rng = np.random.default_rng(4)
    k, alpha, warmup = K, 0.9, 2
    mixer = build_mixer("odm", DOMAINS, 100, 0, variant="exp3", alpha=alpha, warmup_steps=warmup, floor=0.0)
    r_hat, pi, eps = np.zeros(k), np.full(k, 1 / k), 1 / k
    for t in range(1, 30):
        np.testing.assert_allclose(mixer.weights(), pi, rtol=0, atol=1e-12)
        losses = rng.uniform(1.0, 5.0, size=k)
        mixer.observe(stats(t, [64.0] * k, loss_mean=losses))
        if t > warmup:
            r_hat = alpha * r_hat + (1 - alpha) * losses / pi
            prev_eps, eps = eps, min(1 / k, math.sqrt(math.log(k) / (k * t)))
            e = np.exp(prev_eps * r_hat)
            pi = (1 - k * eps) * e / e.sum() + eps
    np.testing.assert_allclose(mixer.weights(), pi, rtol=0, atol=1e-12)
    assert np.ptp(pi) > 1e-3


def test_odm_earlier_options_still_available():
    """Our earlier forms stay selectable: ε_{t+1} (epsilon_offset=1) and R̂ updated during warm-up."""
    m = build_mixer("odm", DOMAINS, 100, 0, variant="smoothed_mean", warmup_steps=2, update_during_warmup=True,
                    epsilon_offset=1, smoothed_init="first_observation", floor=0.0)  # fmt: skip
    losses = np.array([1.0, 2.0, 3.0, 4.0])
    for t in (1, 2):
        m.observe(stats(t, [64.0] * K, loss_mean=losses))
        np.testing.assert_allclose(m.weights(), 0.25)
    m.observe(stats(3, [64.0] * K, loss_mean=losses))
    eps = min(1 / K, math.sqrt(math.log(K) / (K * 4)))
    np.testing.assert_allclose(m.weights(), (1 - K * eps) * np.exp(losses) / np.exp(losses).sum() + eps, atol=1e-12)


# ---- AC-ODM state -----------------------------------------------------------------------------------


def mean_std_norm(tensor):
    """DANG-ai/AC-ODM megatron/data/agent.py L16-L20."""
    return torch.clamp((tensor - tensor.mean()) / (tensor.std() + 1e-8), -3, 3)


def test_zscore_matches_torch_std():
    """DANG-ai/AC-ODM megatron/data/agent.py L16-L20: z-scores use torch.std (N − 1)."""
    rng = np.random.default_rng(5)
    for n in (2, 3, 9, 22):
        v = rng.normal(size=n) * 10 ** rng.uniform(-3, 3)
        np.testing.assert_allclose(zscore(v), mean_std_norm(torch.as_tensor(v)).numpy(), rtol=1e-12, atol=1e-12)
    assert zscore(np.array([0.0] * 99 + [1.0])).max() == 3.0  # the clamp
    assert np.array_equal(zscore(np.array([4.2])), [0.0])  # one entry: 0 here, NaN in torch


def test_state_matches_reference_blocks():
    """DANG-ai/AC-ODM megatron/data/agent.py L352-L376: z(loss), z(loss − loss_first), z(counts),
    z(‖W_p‖_F), z(‖W_p − W_p,first‖_F) (first step only sets the anchors, L363-L367), progress t/T·100.
    Our loss change is against the previous step (docs/methods.md, defect 3), so it agrees on the first two
    states and differs afterwards; with probe_change="weight_change" and W_ref = W_first passed in, the
    probe block agrees on every state."""
    rng = np.random.default_rng(6)
    p, total = 3, 50
    spec = StateSpec(tuple(DOMAINS), p, probe_change="weight_change")
    builder = StateBuilder(spec)
    weights = [torch.as_tensor(rng.normal(size=(6, 4))) for _ in range(p)]
    first_w = first_loss = None
    for t in range(1, 5):
        weights = [w + 0.1 * t * torch.as_tensor(rng.normal(size=w.shape)) for w in weights]
        loss = torch.as_tensor(rng.uniform(2, 5, size=K))
        counts = torch.as_tensor(rng.integers(1, 8, size=K) * 4.0)  # micro-batches × micro-batch size, L359
        norms = torch.tensor([torch.norm(w, p="fro").item() for w in weights])
        if first_w is None:
            first_w, first_loss = [w.clone() for w in weights], loss.clone()
            d_loss, d_w = torch.zeros(K), torch.zeros(p)
        else:
            d_loss = mean_std_norm(loss - first_loss)
            d_w = mean_std_norm(torch.tensor([torch.norm(w - f, p="fro").item() for w, f in zip(weights, first_w)]))
        reference = torch.cat([mean_std_norm(loss), d_loss, mean_std_norm(counts), mean_std_norm(norms), d_w,
                               torch.tensor([t / total * 100])]).numpy()  # fmt: skip
        change = np.array([torch.norm(w - f, p="fro").item() for w, f in zip(weights, first_w)])
        ours = builder.build(t, total, loss.numpy(), counts.numpy(), norms.numpy(), probe_change_norms=change)
        same = np.ones(spec.dim, dtype=bool)
        if t > 2:
            same[K : 2 * K] = False  # loss change: previous step here, first step there
            assert not np.allclose(ours[K : 2 * K], reference[K : 2 * K], atol=1e-5)
        np.testing.assert_allclose(ours[same], reference[same], rtol=0, atol=1e-5)  # float32 state


def test_state_spec_records_probe_change():
    spec = StateSpec(tuple(DOMAINS), 2, probe_change="weight_change")
    assert StateSpec.from_dict(spec.to_dict()) == spec
    legacy = spec.to_dict()
    del legacy["probe_change"]  # actors exported before the field existed used norm_diff
    assert StateSpec.from_dict(legacy).probe_change == "norm_diff"
    with pytest.raises(ValueError, match="probe-change feature"):
        StateSpec(tuple(DOMAINS), 2).check_compatible(spec)
    with pytest.raises(ValueError, match="probe_change"):
        StateSpec(tuple(DOMAINS), 2, probe_change="delta")


# ---- robustness of the new paths ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["doge", "doremi", "odm"])
def test_weights_stay_on_simplex_with_bad_statistics_and_lr(method):
    """The new state (last Gram entries, last λ, ε_prev) never lets NaN/inf statistics off the simplex."""
    rng = np.random.default_rng(7)
    mixer = build_mixer(method, DOMAINS, 100, 0)
    bad = [math.nan, math.inf, -math.inf, 1e300, -1e300, 0.0]
    for t in range(1, 40):
        tokens = np.where(rng.random(K) < 0.7, rng.choice([0.0, 1.0, 64.0, 1e12], size=K), 0.0)
        loss = np.where(rng.random(K) < 0.3, rng.choice(bad, size=K), rng.uniform(1, 5, size=K))
        g = rng.normal(size=(K, 3)) * rng.choice([1e-3, 1.0, 1e150], size=(K, 1))
        gram = g @ g.T
        if rng.random() < 0.3:
            gram[rng.integers(K), rng.integers(K)] = rng.choice(bad)
        excess = np.where(rng.random(K) < 0.3, rng.choice(bad, size=K), rng.uniform(0, 50, size=K))
        lr = rng.choice([None, 1e-3, math.nan, math.inf, -1.0, 0.0, 1e300])
        with np.errstate(all="ignore"):  # inf · 0 in the test's own sums
            loss_sum, excess_sum = loss * tokens, excess * tokens
        mixer.observe(StepStats(step=t, total_steps=100, loss_sum=loss_sum, token_count=tokens,
                                sample_count=tokens / 16, gram=gram, excess_loss_sum=excess_sum, lr=lr))  # fmt: skip
        assert is_valid_weights(mixer.weights(), mixer.floor), mixer.weights()
        assert np.all(np.isfinite(mixer.average_weights()))
