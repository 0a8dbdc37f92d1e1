"""Val loss of any Transformers causal LM (our checkpoints, or e.g. `gpt2` from the Hub) on a shard folder, over
the same windows train_hf.py evaluates: the way to put OpenAI's GPT-2 on the same val curve as a run.

    python eval_loss.py --model runs/x/checkpoint-19073 --data_dir data/fineweb-edu-10BT
    python eval_loss.py --model gpt2 --like runs/x [--output gpt2-val.json]
    accelerate launch --config_file configs/accelerate/cpu-ddp.yaml eval_loss.py --model gpt2 --like runs/x

The settings (data_dir, seq_len, per_device_train_batch_size, eval_batches) come from the flags, then from the
--like run's run_config.json, then from train_hf.py's defaults. The logic lives in modeling/val_loss.py.
"""

import json
import os
import sys

from transformers import HfArgumentParser

from modeling.config import ConfigError
from modeling.data import NoShardsError
from modeling.files import FileFormatError
from modeling.shards import ShardFormatError
from modeling.val_loss import ValLossArguments


def main(argv: list[str] | None = None) -> None:
    parser = HfArgumentParser(ValLossArguments, description=__doc__.split("\n\n")[0])
    argv = sys.argv[1:] if argv is None else argv
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from modeling.locate import NotFoundError, resolve_model
    from modeling.progress import quiet_library_bars
    from modeling.val_loss import compute_val_loss, resolve_settings

    quiet_library_bars()  # in a log: no "Loading weights" bar frames

    try:
        settings = resolve_settings(args)
        # Several processes and no GPU: join over gloo on the CPU (otherwise each would evaluate everything alone).
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="bf16" if args.bf16 else "no")
        if accelerator.num_processes != launched:
            raise ConfigError(f"{launched} processes were launched but only {accelerator.num_processes} joined.")
        try:
            model_dir = resolve_model(args.model, "--model", skip_checksum=args.skip_checksum)
        except NotFoundError as e:
            raise ConfigError(str(e)) from e
        try:
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(accelerator.device)
        except OSError as e:
            raise ConfigError(f"cannot load the model {model_dir}: {e}") from e
        result = {"model": model_dir, **compute_val_loss(model, settings, accelerator)}
    except (ConfigError, FileFormatError, NoShardsError, ShardFormatError) as e:
        sys.exit(f"eval_loss.py: error: {e}")
    if accelerator.is_main_process:
        bpb = f" ({result['val_bpb']:.4f} bits/byte)" if result["val_bpb"] is not None else ""
        print(f"val_loss {result['val_loss']:.4f}{bpb}  {result['model']} on {result['windows']} windows x {result['seq_len']} "
              f"tokens of {result['data_dir']} ({result['processes']} process(es), {result['seconds']:.1f} s)")
        if args.output:
            with open(args.output, "w", encoding="utf-8") as f:
                json.dump(result, f, indent=2)
            print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
