"""Loader for the local test tasks: data files named relative to this folder, not to the working directory.

lm-eval hands `dataset_kwargs` to `datasets.load_dataset("json", ...)`, which resolves relative
`data_files` against the process's working directory; as a task's `custom_dataset` this function
resolves them against the YAML's folder instead, so the tasks run from any directory and offline.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_json(data_files, **_metadata):
    import datasets

    if isinstance(data_files, str):
        data_files = {"test": data_files}
    resolved = {split: str(HERE / path) for split, path in data_files.items()}
    return datasets.load_dataset("json", data_files=resolved)
