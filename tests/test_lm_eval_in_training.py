"""lm-eval inside a multi-process training run: rank 0 evaluates in a child process while the other ranks wait at
a barrier with a long timeout, never in a training collective (whose timeout, NCCL's 10 minutes, MMLU outlasts)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distributed import run_distributed  # noqa: E402
from test_convert_hf import make_run  # noqa: E402

pytest.importorskip("lm_eval")

TASKS_DIR = Path(__file__).resolve().parent / "data" / "lm_eval_tasks"
SHORT_TIMEOUT_S = 3.0  # the training group's timeout here, standing in for NCCL's


def _evaluate_on_rank0_then_train(rank: int, world_size: int, run_dir: str | None, wait: bool):
    """Rank 0 runs lm-eval (and stays away longer than the training group's timeout); then every rank enters the
    next training collective. Returns rank 0's lm-eval record."""
    import time
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from neox.evaluation import lm_eval_record
    from neox.evaluation.lm_eval_runner import run_lm_eval_isolated
    from neox.training.callbacks import long_wait_group, run_on_main_then_wait

    training = dist.new_group(backend="gloo", timeout=timedelta(seconds=SHORT_TIMEOUT_S))
    wait_group = long_wait_group(300) if wait else None

    def lm_eval():
        result = None
        if run_dir is not None:
            result = run_lm_eval_isolated(run_dir, ["acodm_tiny_mc"], num_fewshot=0, limit=4,
                                          include_path=str(TASKS_DIR), batch_size=4, device="cpu",
                                          bootstrap_iters=10, timeout_s=240)
        time.sleep(2 * SHORT_TIMEOUT_S)  # past the training group's timeout however fast lm-eval was
        return result

    result = run_on_main_then_wait(lm_eval, rank == 0, wait_group)
    step = torch.ones(1)
    dist.all_reduce(step, group=training)  # the next training step's collective
    return float(step), None if result is None else lm_eval_record(result)


@pytest.mark.launches
def test_other_ranks_wait_for_lm_eval_outside_the_training_collectives(tmp_path):
    run_dir = make_run(tmp_path / "run", seed=3)
    results = run_distributed(_evaluate_on_rank0_then_train, 2, str(run_dir), True, timeout_s=300)
    assert [r[0] for r in results] == [2.0, 2.0]
    assert set(results[0][1]) == {"acodm_tiny_mc/acc", "acodm_tiny_mc/acc_norm"} and results[1][1] is None


@pytest.mark.launches
def test_without_the_wait_the_other_rank_times_out(tmp_path):
    """The control: rank 1 going straight to the training collective fails on its short timeout."""
    with pytest.raises(RuntimeError, match="rank [01] failed"):
        run_distributed(_evaluate_on_rank0_then_train, 2, None, False, timeout_s=120)
