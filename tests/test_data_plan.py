"""MixturePlan: exact per-batch counts, determinism, no repeat / no skip, resume."""

import json
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neox.data.plan import MixturePlan, largest_remainder_counts


def _exact_quotas(raw, total):
    mass = sum(raw)
    return [Fraction(x * total, mass) for x in raw]


@settings(max_examples=200, deadline=None)
@given(
    raw=st.lists(st.integers(0, 1000), min_size=1, max_size=12).filter(lambda xs: sum(xs) > 0),
    total=st.integers(1, 300),
)
def test_largest_remainder_is_hamilton_apportionment(raw, total):
    weights = np.array(raw, dtype=np.float64) / sum(raw)
    counts = largest_remainder_counts(weights, total).tolist()
    assert sum(counts) == total
    quota = _exact_quotas(raw, total)
    # Each count is its quota rounded down or up, and every domain rounded up had a remainder at least
    # as large as every domain rounded down (up to float rounding of the weights) -- Hamilton's method.
    assert all(int(q) <= c <= int(q) + 1 for q, c in zip(quota, counts))
    rounded_up = [float(q - int(q)) for q, c in zip(quota, counts) if c == int(q) + 1 and q != int(q)]
    rounded_down = [float(q - int(q)) for q, c in zip(quota, counts) if c == int(q)]
    if rounded_up and rounded_down:
        assert min(rounded_up) >= max(rounded_down) - 1e-9
    if all(q.denominator == 1 for q in quota):  # exact quotas are returned as they are
        assert counts == [int(q) for q in quota]


@settings(max_examples=200, deadline=None)
@given(
    raw=st.lists(st.integers(0, 1000), min_size=1, max_size=10).filter(lambda xs: sum(xs) > 0),
    total=st.integers(1, 200),
    min_count=st.integers(1, 10),
)
def test_min_per_domain_floor(raw, total, min_count):
    weights = np.array(raw, dtype=np.float64) / sum(raw)
    if len(raw) * min_count > total:
        with pytest.raises(ValueError, match="min_samples_per_domain"):
            largest_remainder_counts(weights, total, min_count)
        return
    counts = largest_remainder_counts(weights, total, min_count)
    assert counts.sum() == total
    assert (counts >= min_count).all()
    plain = largest_remainder_counts(weights, total)
    if (plain >= min_count).all():  # the floor does not bind -> plain rounding
        assert counts.tolist() == plain.tolist()
    else:  # a domain that plain rounding puts below the floor gets exactly the floor
        assert (counts[plain < min_count] == min_count).all()
    # a strictly heavier domain never gets fewer samples (Hamilton's method is monotone in the quota)
    heavier = weights[:, None] > weights[None, :]
    assert (counts[:, None] >= counts[None, :])[heavier].all()


def test_plan_rejects_bad_config_and_weights():
    with pytest.raises(ValueError, match="exceeds global_batch_sequences"):
        MixturePlan([10, 10, 10], global_batch_sequences=5, seed=0, min_samples_per_domain=2)
    plan = MixturePlan([10, 10], global_batch_sequences=8, seed=0)
    with pytest.raises(ValueError, match="one per domain"):
        plan.set_weights(np.array([1.0]))
    with pytest.raises(ValueError, match="sum to 1"):
        plan.set_weights(np.array([0.7, 0.7]))
    with pytest.raises(ValueError, match="finite"):
        plan.set_weights(np.array([np.nan, 1.0]))


def _run(plan, steps, weight_schedule):
    out = []
    for step in range(steps):
        if step in weight_schedule:
            plan.set_weights(weight_schedule[step])
        out.append(plan.next_global_batch())
    return out


def _schedule(num_domains, steps, every, seed):
    rng = np.random.default_rng(seed)
    return {s: rng.dirichlet(np.full(num_domains, 0.5)).astype(np.float32) for s in range(0, steps, every)}


def test_every_batch_has_exact_counts():
    num_domains, batch = 5, 37
    plan = MixturePlan([50] * num_domains, global_batch_sequences=batch, seed=3, min_samples_per_domain=1)
    schedule = _schedule(num_domains, 40, 7, seed=0)
    for step in range(40):
        if step in schedule:
            plan.set_weights(schedule[step])
            expected = largest_remainder_counts(plan.weights, batch, 1)
        domain_b, sample_b = plan.next_global_batch()
        assert domain_b.shape == sample_b.shape == (batch,)
        assert domain_b.dtype == sample_b.dtype == np.int64
        assert np.bincount(domain_b, minlength=num_domains).tolist() == expected.tolist()


def test_deterministic_and_seed_dependent():
    schedule = _schedule(4, 30, 5, seed=1)
    a = _run(MixturePlan([9, 20, 31, 7], 16, seed=11), 30, schedule)
    b = _run(MixturePlan([9, 20, 31, 7], 16, seed=11), 30, schedule)
    c = _run(MixturePlan([9, 20, 31, 7], 16, seed=12), 30, schedule)
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(a, c))


def test_segment_length_does_not_change_the_plan():
    schedule = _schedule(3, 50, 9, seed=2)
    a = _run(MixturePlan([5, 5, 5], 12, seed=0, segment_steps=1), 50, schedule)
    b = _run(MixturePlan([5, 5, 5], 12, seed=0, segment_steps=64), 50, schedule)
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))


def test_no_repeat_no_skip_across_weight_changes():
    num_domains = 6
    plan = MixturePlan([13] * num_domains, global_batch_sequences=24, seed=5)
    consumed = [[] for _ in range(num_domains)]
    rng = np.random.default_rng(0)
    for step in range(300):
        if step % 3 == 0:
            # Often-extreme weights: some domains pause for a while, then resume.
            plan.set_weights(rng.dirichlet(np.full(num_domains, 0.2)))
        domain_b, sample_b = plan.next_global_batch()
        for k in range(num_domains):
            consumed[k].extend(np.sort(sample_b[domain_b == k]).tolist())
    for k in range(num_domains):
        # Global indices of a domain are taken in cursor order: exactly 0..c-1, nothing repeated or
        # skipped, whatever the weights did (DomainDataset maps them to epochs of the data).
        assert consumed[k] == list(range(plan.cursors[k]))
    assert plan.cursors.sum() == 300 * 24


def test_slot_order_is_shuffled():
    plan = MixturePlan([100, 100], global_batch_sequences=64, seed=0)
    domain_b, _ = plan.next_global_batch()
    assert not np.array_equal(domain_b, np.sort(domain_b))  # not grouped by domain
    assert np.bincount(domain_b).tolist() == [32, 32]


def test_resume_equals_uninterrupted():
    schedule = _schedule(4, 40, 6, seed=3)
    reference = _run(MixturePlan([8, 3, 50, 21], 20, seed=9, min_samples_per_domain=1), 40, schedule)

    first = MixturePlan([8, 3, 50, 21], 20, seed=9, min_samples_per_domain=1)
    head = _run(first, 17, schedule)  # stops mid-segment and between weight updates
    state = json.loads(json.dumps(first.state_dict()))  # checkpoints are JSON
    resumed = MixturePlan([8, 3, 50, 21], 20, seed=9, min_samples_per_domain=1)
    resumed.load_state_dict(state)
    assert resumed.step == 17
    tail = []
    for step in range(17, 40):
        if step in schedule:
            resumed.set_weights(schedule[step])
        tail.append(resumed.next_global_batch())
    for x, y in zip(reference, head + tail):
        assert np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1])


def test_load_state_dict_rejects_other_config():
    state = MixturePlan([8, 3], 20, seed=9).state_dict()
    with pytest.raises(ValueError, match="global_batch_sequences"):
        MixturePlan([8, 3], 24, seed=9).load_state_dict(state)
    with pytest.raises(ValueError, match="samples_per_epoch"):
        MixturePlan([8, 4], 20, seed=9).load_state_dict(state)
