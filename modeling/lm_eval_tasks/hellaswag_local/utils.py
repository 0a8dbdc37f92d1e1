"""The `hellaswag_local` task's data loading and document processing.

Where the data comes from (first that is set):
  1. lm-eval's task metadata `hellaswag_data` (CLI: `--metadata hellaswag_data=PATH`; API: `TaskManager(metadata=...)`),
  2. the environment variable HELLASWAG_DATA,
  3. the Hub dataset Rowan/hellaswag (what lm-eval's built-in `hellaswag` reads).
The value is a local `.jsonl[.gz]` / `.json[.gz]` / `.parquet` file or a Hub dataset id. A relative path is relative
to the working directory of the process, as for any other path typed on a command line.

The prompt text itself is built by lm-evaluation-harness's `hellaswag` task (`lm_eval.tasks.hellaswag.utils`), not
by this project, so running this task is an independent check of `modeling.hellaswag_data.render` (the lm-eval convention).
"""

import logging
import os
import sys
from pathlib import Path

import datasets
from lm_eval.tasks.hellaswag.utils import process_docs as lm_eval_process_docs

try:
    from modeling.locate import looks_like_path, nearest_sibling
except ImportError:  # lm_eval run from elsewhere with --include_path: this file lives in REPO/modeling/...
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from modeling.locate import looks_like_path, nearest_sibling

DATA_ENV = "HELLASWAG_DATA"
METADATA_KEY = "hellaswag_data"
HUB_DATASET = "Rowan/hellaswag"
logger = logging.getLogger("lm_eval.tasks.hellaswag_local")
_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}
_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".json", ".json.gz")


def _builder(path: Path) -> str | None:
    suffixes = path.suffixes[-2:] if path.suffix in (".gz", ".bz2", ".xz", ".zst") else path.suffixes[-1:]
    return _BUILDERS.get(suffixes[0].lower()) if suffixes else None


def load_hellaswag(**metadata) -> datasets.DatasetDict:
    """lm-eval's `custom_dataset` hook: called with the task's metadata (which also carries the model arguments)."""
    given = metadata.get(METADATA_KEY)
    source = str(given or os.environ.get(DATA_ENV) or HUB_DATASET)
    origin = (f"--metadata {METADATA_KEY}" if given else f"${DATA_ENV}" if os.environ.get(DATA_ENV)
              else "the default")
    path = Path(source).expanduser()
    if path.is_file():
        builder = _builder(path)
        if builder is None:
            raise ValueError(f"hellaswag_local: {path} (from {origin}) is not .jsonl[.gz], .json[.gz] or .parquet")
        data = datasets.load_dataset(builder, data_files={"validation": str(path.resolve())}, split="validation")
    elif looks_like_path(source, _SUFFIXES):  # the project's one rule (modeling.locate): a typo is not a Hub id
        near = nearest_sibling(source)
        raise FileNotFoundError(f"hellaswag_local: HellaSwag file {path.resolve()} (from {origin}) does not exist"
                                f"{f' (did you mean {near}?)' if near else ''}. Set ${DATA_ENV} or --metadata "
                                f"{METADATA_KEY}=PATH to an existing .jsonl[.gz] or .parquet.")
    else:
        try:
            data = datasets.load_dataset(source, split="validation")
        except Exception as e:  # offline, unreachable, or no such dataset: say how to use a local copy
            raise RuntimeError(f"hellaswag_local: could not load the Hub dataset {source!r} (from {origin}): {e}\n"
                               f"For a local copy, set {DATA_ENV}=/path/to/hellaswag_val.jsonl.gz or pass "
                               f"--metadata {METADATA_KEY}=/path/to/file.") from e
    logger.info("hellaswag_local: %d examples from %s (%s)", len(data), path.resolve() if path.is_file() else source,
                origin)
    return datasets.DatasetDict({"validation": data})


def _add_ctx_a_ctx_b(doc: dict) -> dict:
    # The reduced form has one `ctx` (= ctx_a + " " + ctx_b); lm-eval capitalises ctx_b, which we cannot recover.
    return {"ctx_a": doc["ctx"], "ctx_b": ""}


def process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    if "ctx_a" not in dataset.column_names or "ctx_b" not in dataset.column_names:
        dataset = dataset.map(_add_ctx_a_ctx_b)
    return lm_eval_process_docs(dataset)
