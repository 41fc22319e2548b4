"""HumanEval's execution check (neox/evaluation/code_execution.py): known-correct and known-wrong programs."""

from __future__ import annotations

import math
import time

import pytest

from neox.evaluation.code_execution import (CodeExecutionRefusedError, build_predictions, estimate_pass_at_k,
                                            pass_at_k, run_program)

# Two HumanEval-style problems: prompt, test, entry point (HumanEval/0's and HumanEval/2's shape).
CLOSE = ('from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n'
         '    """ True if two numbers are closer than threshold. """\n')
CLOSE_TEST = ("\n\ndef check(candidate):\n    assert candidate([1.0, 2.0, 3.0], 0.5) == False\n"
              "    assert candidate([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3) == True\n")
TRUNC = 'def truncate_number(number: float) -> float:\n    """ The decimal part of number. """\n'
TRUNC_TEST = "\n\ndef check(candidate):\n    assert candidate(3.5) == 0.5\n    assert abs(candidate(1.33) - 0.33) < 1e-6\n"

CORRECT = [
    (CLOSE, "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n",
     CLOSE_TEST, "has_close_elements"),
    (TRUNC, "    return number % 1.0\n", TRUNC_TEST, "truncate_number"),
]
WRONG = [
    (CLOSE, "    return False\n", CLOSE_TEST, "has_close_elements"),   # an assertion fails
    (TRUNC, "    while True:\n        pass\n", TRUNC_TEST, "truncate_number"),  # never returns: the timeout
]


def program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    # lm-eval's humaneval: prediction = prompt + completion (build_predictions), reference = test + check(...)
    return prompt + completion + "\n" + test + f"\ncheck({entry_point})"


@pytest.fixture
def allowed(monkeypatch):
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")


def test_correct_programs_pass_and_wrong_ones_fail(allowed):
    for case in CORRECT:
        assert run_program(program(*case)).passed
    res = run_program(program(*WRONG[0]))
    assert not res.passed and "AssertionError" in res.result
    start = time.monotonic()
    res = run_program(program(*WRONG[1]), timeout_s=1.0)
    assert res == type(res)(False, "timed out") and time.monotonic() - start < 5.0


def test_pass_at_k_as_lm_eval_calls_it(allowed):
    cases = CORRECT + WRONG
    docs = [{"prompt": p} for p, _, _, _ in cases]
    predictions = build_predictions([[c] for _, c, _, _ in cases], docs)  # one greedy sample per problem
    references = [t + f"\ncheck({e})" for _, _, t, e in cases]
    assert pass_at_k(references, predictions, k=[1], timeout_s=1.0) == {"pass@1": 0.5}
    # lm-eval scores one problem per call, as its humaneval task does.
    assert [pass_at_k([r], [p], k=[1], timeout_s=1.0)["pass@1"] for r, p in zip(references, predictions)] == [1, 1, 0, 0]


def test_timeout_kills_the_children_the_program_started(allowed, tmp_path):
    marker = tmp_path / "grandchild_alive"
    # The guard replaces subprocess.Popen; a program can still reach os.posix_spawn. The group kill ends it too.
    grandchild = f"import time, pathlib; time.sleep(2.5); pathlib.Path({str(marker)!r}).write_text('x')"
    code = (f"import os, sys\nos.posix_spawn(sys.executable, [sys.executable, '-c', {grandchild!r}], {{}})\n"
            "while True:\n    pass\n")
    assert run_program(code, timeout_s=1.0).result == "timed out"
    time.sleep(2.5)
    assert not marker.exists()


def test_guard_blocks_destructive_calls(allowed, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    res = run_program(f"import os\nos.remove({str(victim)!r})\n")
    assert not res.passed and "NoneType" in res.result and victim.read_text() == "keep me"
    res = run_program("import subprocess\nsubprocess.run(['true'])\n")
    assert not res.passed


def test_execution_needs_permission(monkeypatch):
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    with pytest.raises(CodeExecutionRefusedError, match="HF_ALLOW_CODE_EVAL=1.*--allow-code-execution"):
        pass_at_k(["assert True"], [["x = 1"]], k=[1])


def test_estimator_against_brute_force():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                # P(at least one of k draws without replacement passes) = 1 - C(n-c, k) / C(n, k)
                expected = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert estimate_pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
