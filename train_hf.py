"""Train GPT-2 from scratch: GPT2Config + GPT2LMHeadModel, an Accelerate loop over token shards.

    python train_hf.py configs/train/cpu-demo.yaml [--field value ...]
    accelerate launch train_hf.py configs/train/gpt2-124m-fineweb-edu-10b.yaml
    accelerate launch --config_file configs/accelerate/cpu-ddp.yaml train_hf.py configs/train/cpu-demo.yaml
    python train_hf.py configs/train/cpu-demo.yaml --preflight    # speed, memory, time, disk, fast paths; no training

Any field of modeling/config.py's TrainingConfig can be set in the YAML recipe or overridden on the command line.
"""

import os
import sys

from modeling.config import ConfigError, parse_training_config
from modeling.data import NoShardsError
from modeling.files import FileFormatError
from modeling.shards import ShardFormatError
from modeling.tokenizer import TokenizerNotFoundError


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # Under accelerate launch / torchrun every message names its process, so a failure on one of many is findable.
    who = f"train_hf.py [rank {os.environ['RANK']}]" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "train_hf.py"
    try:
        config = parse_training_config(argv)
        from modeling.checkpoint import CheckpointSaveError
        from modeling.faults import TrainingStopped
        from modeling.trainer import train  # after parsing, so --help is quick

        try:
            if config.preflight:  # measure the run instead of training it (modeling/preflight.py)
                from modeling.preflight import main as preflight

                sys.exit(preflight(config, who))
            train(config)
        except TrainingStopped as e:
            print(f"{who}: {e}", file=sys.stderr, flush=True)
            sys.exit(e.exit_code)
        except CheckpointSaveError as e:
            sys.exit(f"{who}: error: {e}")
    except (ConfigError, FileFormatError, NoShardsError, ShardFormatError, TokenizerNotFoundError) as e:
        sys.exit(f"{who}: error: {e}")
    except Exception as e:
        if who != "train_hf.py":  # the launcher's summary shows tracebacks; say in one line which rank failed and why
            print(f"{who}: failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        raise


if __name__ == "__main__":
    main()
