"""Zero-shot HellaSwag of a checkpoint: our fast scorer (nanogpt and lm-eval conventions) and/or lm-evaluation-harness.

    python eval_hellaswag.py --model out/ckpt --data ../shared/data/hellaswag/hellaswag_val_llamacpp_preprocessed.jsonl.gz \
        --limit 500 --backend both --output hellaswag.json --per_example hellaswag.jsonl

Without --data it reads the Hub dataset Rowan/hellaswag (validation). Under `accelerate launch` every process
scores a slice and the main process prints and writes. The driver lives in modeling/hellaswag_eval.py, the scoring
in modeling/hellaswag.py.
"""

from __future__ import annotations

import sys

from modeling.config import ConfigError, parse_cli
from modeling.hellaswag_eval import HellaSwagEvalArguments


def parse_args(argv: list[str] | None = None) -> HellaSwagEvalArguments:
    return parse_cli(HellaSwagEvalArguments, argv, description=__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from modeling.hellaswag_eval import evaluate_hellaswag

    try:
        evaluate_hellaswag(args)
    except ConfigError as e:
        print(f"eval_hellaswag.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
