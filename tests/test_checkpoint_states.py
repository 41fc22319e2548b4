"""Checkpoints by composition: each stateful part's state goes to its place in the checkpoint layout, which stays
the one older checkpoints have (the mixing component's weights in trainer.json, mixer/ and statistics/), and a
checkpoint without the newer parts (statistics/, callbacks.json) still loads."""

from __future__ import annotations

import json
import shutil

import numpy as np

from neox.training.callbacks import Callback, CallbackStates, EvalCallback
from neox.training.checkpoint import load_states, save_states


class Part:
    """A stateful part holding whatever it was last given."""

    def __init__(self, sd=None):
        self.sd = sd

    def state_dict(self):
        return self.sd

    def load_state_dict(self, sd):
        self.sd = sd


def _states(evaluated: int = -1):
    evals = EvalCallback()
    evals._last_eval_step = evaluated
    return {"trainer": Part({"step": 6, "tokens": 60}), "data": Part({"plan": {"step": 6}}),
            "mixing": Part({"weights": [0.25, 0.75], "mixer": {"t": 6, "avg": np.array([0.5, 0.5])},
                            "statistics": {"previous_token_count": np.array([3.0, 4.0])}}),
            "callbacks": CallbackStates([Callback(), evals])}


def test_each_part_in_its_place_and_back(tmp_path):
    save_states(tmp_path, _states(evaluated=6))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["callbacks.json", "data.json", "mixer", "statistics",
                                                           "trainer.json"]
    trainer = json.loads((tmp_path / "trainer.json").read_text())
    assert trainer["weights"] == [0.25, 0.75] and trainer["step"] == 6  # the weights where they always were
    assert json.loads((tmp_path / "callbacks.json").read_text()) == {"EvalCallback": {"last_eval_step": 6}}

    fresh = _states()
    for part in ("trainer", "data", "mixing"):
        fresh[part].sd = None
    load_states(tmp_path, fresh)
    assert fresh["trainer"].sd["step"] == 6 and fresh["data"].sd == {"plan": {"step": 6}}
    mixing = fresh["mixing"].sd
    assert mixing["weights"] == [0.25, 0.75] and mixing["mixer"]["t"] == 6
    np.testing.assert_array_equal(mixing["mixer"]["avg"], [0.5, 0.5])
    np.testing.assert_array_equal(mixing["statistics"]["previous_token_count"], [3.0, 4.0])
    assert fresh["callbacks"].callbacks[1]._last_eval_step == 6


def test_a_checkpoint_without_the_newer_parts_loads(tmp_path):
    save_states(tmp_path, _states(evaluated=6))
    shutil.rmtree(tmp_path / "statistics")
    (tmp_path / "callbacks.json").unlink()
    fresh = _states()
    load_states(tmp_path, fresh)
    assert fresh["mixing"].sd["statistics"] is None  # the mixing component starts its statistics anew
    assert fresh["callbacks"].callbacks[1]._last_eval_step == -1
