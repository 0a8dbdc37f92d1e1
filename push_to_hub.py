"""Push a checkpoint to the Hugging Face Hub with its model card and plots, or write the folder that would go.

    python push_to_hub.py runs/gpt2-124m-fineweb-edu-10b/checkpoint-19073 --repo_id USER/NAME [--private]
    python push_to_hub.py out/demo/run --repo_id USER/NAME --dry_run out/demo/upload     # no token, no network

Uploads the Transformers files (config, weights, tokenizer), README.md (the model card), eval.png,
lr_schedule.png, eval_hellaswag.py's recorded results and the metrics log; never optimizer state, RNG states or
training_state/. The token comes from HF_TOKEN or `hf auth login` and is never printed. The logic is in
modeling/hub.py (upload), modeling/report.py (card and plots) and modeling/run_files.py (the run's files).
"""

from __future__ import annotations

import sys
from pathlib import Path

from modeling.config import parse_cli


def parse_args(argv: list[str] | None = None):
    from modeling.hub import PushArguments

    return parse_cli(PushArguments, argv, positional=("checkpoint",), description=__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from modeling import hub
    from modeling.files import FileFormatError

    try:
        hub.check_repo_id(args.repo_id)
        if args.dry_run:
            checkpoint = hub.check_checkpoint(args.checkpoint, args.skip_checksum)
            files = hub.stage(checkpoint, args.dry_run, repo_id=args.repo_id, dataset_id=args.dataset,
                              license=args.license, overwrite=args.overwrite, _verified=True)
            print(f"dry run: {checkpoint} -> {args.dry_run} (what `--repo_id {args.repo_id}` would upload; nothing sent)")
            print(hub.format_listing(files, Path(args.dry_run)))
            return
        url = hub.push(args.checkpoint, args.repo_id, private=args.private, revision=args.revision,
                       commit_message=args.commit_message, dataset_id=args.dataset, license=args.license,
                       skip_checksum=args.skip_checksum)
        print(f"pushed: {url}")
    except (hub.HubError, FileFormatError) as e:
        sys.exit(f"push_to_hub.py: error: {e}")


if __name__ == "__main__":
    main()
