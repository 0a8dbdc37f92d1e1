"""Tokenize a text source with GPT-2's BPE into llm.c-format token shards (+ manifest.json).

    python prepare_data.py                                   # FineWeb-Edu sample-10BT from the Hub (streamed)
    python prepare_data.py --source ../shared/data/fineweb_edu_sample --out data/demo --shard_size 1000000
    python prepare_data.py --verify data/demo                # check every shard against manifest.json
"""

import shlex
import sys

from modeling.config import parse_cli
from modeling.prepare import OutputDirError, PrepareArguments, WriteFailedError, prepare_shards
from modeling.progress import quiet_library_bars
from modeling.shards import ShardFormatError
from modeling.sources import SourceError
from modeling.tokenizer import TokenizerNotFoundError
from modeling.verify import verify_shards


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_cli(PrepareArguments, argv, description=__doc__.split("\n\n")[0])
        quiet_library_bars()  # in a log: no "Resolving data files" bars from datasets (ours prints status lines)
        if args.verify:
            print(verify_shards(args.verify, progress=True).summary(args.verify))
            return
        manifest = prepare_shards(args, command=shlex.join(["prepare_data.py", *argv]))
    except (SourceError, OutputDirError, WriteFailedError, ShardFormatError, TokenizerNotFoundError, ValueError, FileNotFoundError) as e:
        sys.exit(f"prepare_data.py: error: {e}")
    totals = manifest["totals"]
    print(f"{args.out}: {len(manifest['shards'])} shards, {totals['docs']:,} documents, {totals['tokens']:,} tokens "
          f"(val {totals['val_tokens']:,}, train {totals['train_tokens']:,})")


if __name__ == "__main__":
    main()
