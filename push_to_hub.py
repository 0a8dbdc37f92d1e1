"""Push a checkpoint to the Hugging Face Hub with its model card and plots, or write the folder that would go.

    python push_to_hub.py runs/gpt2-124m-fineweb-edu-10b/checkpoint-19073 --repo-id USER/NAME [--private]
    python push_to_hub.py out/demo/run --repo-id USER/NAME --dry-run out/demo/upload     # no token, no network

Uploads the Transformers files (config, weights, tokenizer), README.md (the model card), eval.png,
lr_schedule.png, eval_hellaswag.py's recorded results and the metrics log; never optimizer state, RNG states or
training_state/. The token comes from HF_TOKEN or `hf auth login` and is never printed. The logic is in
modeling/hub.py (upload) and modeling/report.py (card and plots).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a checkpoint-N folder, or a training output_dir (its newest checkpoint)")
    p.add_argument("--repo-id", required=True, help="USER/NAME (or ORG/NAME) of the model repository")
    p.add_argument("--private", action="store_true", help="create the repository as private (if it does not exist)")
    p.add_argument("--revision", "--branch", dest="revision", default=None,
                   help="branch to push to (created from main if missing); default: main")
    p.add_argument("--commit-message", default=None, help="default: 'Upload checkpoint-N (gpt2-hf push_to_hub.py)'")
    p.add_argument("--dry-run", metavar="OUT", default=None,
                   help="write exactly the folder that would be uploaded into OUT, list it, and upload nothing")
    p.add_argument("--dataset", default=None, help="Hub id of the training data for the card's metadata, when the "
                   "shards were made from local files (e.g. HuggingFaceFW/fineweb-edu)")
    p.add_argument("--license", default="mit", help="license in the card's metadata")
    p.add_argument("--overwrite", action="store_true", help="--dry-run: replace OUT if it exists and is not empty")
    p.add_argument("--skip_checksum", action="store_true", help="do not check the files against their marker's sha256")
    return p.parse_args(argv)


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
            print(f"dry run: {checkpoint} -> {args.dry_run} (what `--repo-id {args.repo_id}` would upload; nothing sent)")
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
