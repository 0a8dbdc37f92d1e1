"""Document processing for the `hellaswag_local` task: adapt the reduced form, then use lm-eval's own code.

The prompt text itself is built by lm-evaluation-harness's `hellaswag` task (`lm_eval.tasks.hellaswag.utils`), not
by this project, so running this task is an independent check of `modeling.hellaswag_data.render` (the lm-eval convention).
"""

import datasets
from lm_eval.tasks.hellaswag.utils import process_docs as lm_eval_process_docs


def _add_ctx_a_ctx_b(doc: dict) -> dict:
    # The reduced form has one `ctx` (= ctx_a + " " + ctx_b); lm-eval capitalises ctx_b, which we cannot recover.
    return {"ctx_a": doc["ctx"], "ctx_b": ""}


def process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    if "ctx_a" not in dataset.column_names or "ctx_b" not in dataset.column_names:
        dataset = dataset.map(_add_ctx_a_ctx_b)
    return lm_eval_process_docs(dataset)
