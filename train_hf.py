"""Train GPT-2 from scratch: GPT2Config + GPT2LMHeadModel, an Accelerate loop over token shards.

    python train_hf.py configs/train/cpu-demo.yaml [--field value ...]
    accelerate launch train_hf.py configs/train/gpt2-124m-fineweb-edu-10b.yaml
    accelerate launch --config_file configs/accelerate/cpu-ddp.yaml train_hf.py configs/train/cpu-demo.yaml

Any field of modeling/config.py's TrainingConfig can be set in the YAML recipe or overridden on the command line.
"""

import sys

from modeling.config import ConfigError, parse_training_config
from modeling.data import NoShardsError
from modeling.shards import ShardFormatError
from modeling.tokenizer import TokenizerNotFoundError


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        config = parse_training_config(argv)
        from modeling.trainer import train  # after parsing, so --help is quick

        train(config)
    except (ConfigError, NoShardsError, ShardFormatError, TokenizerNotFoundError) as e:
        sys.exit(f"train_hf.py: error: {e}")


if __name__ == "__main__":
    main()
