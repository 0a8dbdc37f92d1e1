"""What a run shows its users, written from its files: the plots (modeling/plots.py) and the model card
(modeling/card.py), from the run's facts (modeling/run_files.py: RunFacts, built once per command).

    python -m modeling.report OUTPUT_DIR [--checkpoint DIR]

writes the plots into OUTPUT_DIR, and the card with its own copy of the plots into the newest complete checkpoint
(or DIR). The trainer does the same at the end of training; push_to_hub.py builds them again for the folder it
uploads, so the card also holds the HellaSwag results eval_hellaswag.py recorded in the checkpoint afterwards.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from modeling.card import build_model_card
from modeling.checkpoint import newest_checkpoint
from modeling.config import parse_cli
from modeling.files import FileFormatError
from modeling.plots import write_plots
from modeling.run_files import CARD, METRICS, PLOTS, RunFacts, record_hellaswag_result


def write_report(facts: RunFacts, dest: str | Path | None = None, **card_kwargs) -> list[Path]:
    """The card (README.md) and the plots of the checkpoint ``facts`` describe, into ``dest`` (default: the
    checkpoint itself)."""
    dest = Path(dest or facts.checkpoint)
    written = write_plots(facts, dest)
    build_model_card(facts, **card_kwargs).save(str(dest / CARD))
    return written + [dest / CARD]


def finish_run(output_dir: str | Path, checkpoint: str | Path | None) -> list[Path]:
    """End of training: plots into ``output_dir``, and card + plots into the final checkpoint. The run is saved
    by then, so a failure here is reported, not raised: it must not turn a finished run into a failed one."""
    written = []
    try:
        if checkpoint is not None:
            written += write_report(RunFacts(checkpoint, output_dir))
            for name in PLOTS:  # the run's plots are the final checkpoint's: drawn once, copied
                if (Path(checkpoint) / name).is_file():
                    shutil.copy2(Path(checkpoint) / name, Path(output_dir) / name)
                    written.append(Path(output_dir) / name)
    except Exception as e:  # noqa: BLE001
        print(f"warning: could not write the plots and model card ({type(e).__name__}: {e}); the checkpoint is "
              f"complete. Retry with: python -m modeling.report {output_dir}", file=sys.stderr)
    for path in written:
        print(f"wrote {path}")
    return written


# --------------------------------------------------------------------------------------------------------------
# eval_hellaswag.py's results, kept with the checkpoint they measure


def recordable(checkpoint: str | Path) -> bool:
    """A local model folder we may add results to: not a snapshot in the Hub cache (files shared by revisions)."""
    from huggingface_hub import constants

    path = Path(checkpoint).resolve()
    return path.is_dir() and os.access(path, os.W_OK) and Path(constants.HF_HUB_CACHE).resolve() not in path.parents


def record_hellaswag(checkpoint: str | Path, results: dict, *, data: str | None, offset: int, n: int,
                     dtype: str, full: bool | None = None) -> Path:
    """Add one evaluation to ``checkpoint/hellaswag_results.json`` (run_files.record_hellaswag_result), then rebuild
    the checkpoint's own card (README.md) and plots, so the folder says what a push of it would say."""
    path = record_hellaswag_result(checkpoint, results, data=data, offset=offset, n=n, dtype=dtype, full=full)
    facts = RunFacts(checkpoint)
    if facts.is_training_run:  # a converted folder's own README.md is its author's: left alone
        try:
            write_report(facts)
        except Exception as e:  # noqa: BLE001 - the results are recorded; a card can be rebuilt later
            print(f"warning: could not rebuild {Path(checkpoint) / CARD} ({type(e).__name__}: {e}); the results are "
                  f"recorded in {path}. Retry with: python -m modeling.report {Path(checkpoint).parent} "
                  f"--checkpoint {checkpoint}", file=sys.stderr)
    return path


@dataclass
class ReportArguments:
    """``python -m modeling.report``'s flags (the output_dir may also be given by position)."""

    output_dir: Optional[str] = field(default=None, metadata={
        "help": "a training output_dir (holding metrics.jsonl and checkpoint-N/)"})
    checkpoint: Optional[str] = field(default=None, metadata={
        "help": "the checkpoint that gets the card (default: the newest)"})
    dataset: Optional[str] = field(default=None, metadata={
        "help": "Hub id of the training data, for the card's metadata, when it was read from local files "
                "(e.g. HuggingFaceFW/fineweb-edu)"})


def main(argv: list[str] | None = None) -> None:
    args = parse_cli(ReportArguments, argv, positional=("output_dir",),
                     description="Plots (eval.png, lr_schedule.png) and model card of a training run.")
    output_dir = Path(args.output_dir)
    if not (output_dir / METRICS).is_file():
        sys.exit(f"modeling.report: error: {output_dir / METRICS} does not exist; pass a training output_dir")
    checkpoint = Path(args.checkpoint) if args.checkpoint else newest_checkpoint(output_dir)
    try:
        facts = RunFacts(checkpoint, output_dir)  # once: the plots of both folders and the card are drawn from it
        written = write_plots(facts, output_dir)
        if checkpoint is not None:
            written += write_report(facts, dataset_id=args.dataset)
    except FileFormatError as e:
        sys.exit(f"modeling.report: error: {e}")
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
