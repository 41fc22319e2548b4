"""Downstream evaluation with lm-eval on exported checkpoints (see lm_eval_runner.py)."""

from neox.evaluation.lm_eval_runner import (PAPER_TASKS, SUITES, DatasetUnavailableError, EvalError, EvalPlan,
                                            UnsafeCodeRefusedError, lm_eval_record, resolve_suite,
                                            results_markdown, run_lm_eval, run_suite)

__all__ = ["PAPER_TASKS", "SUITES", "DatasetUnavailableError", "EvalError", "EvalPlan", "UnsafeCodeRefusedError",
           "lm_eval_record", "resolve_suite", "results_markdown", "run_lm_eval", "run_suite"]
