"""Val loss of any Transformers causal LM (our checkpoints, or e.g. `gpt2` from the Hub) on a shard folder, over
the same windows train_hf.py evaluates: the way to put OpenAI's GPT-2 on the same val curve as a run.

    python eval_loss.py --model runs/x/checkpoint-19073 --data_dir data/fineweb-edu-10BT
    python eval_loss.py --model gpt2 --like runs/x [--output gpt2-val.json]
    accelerate launch --config_file configs/accelerate/cpu-ddp.yaml eval_loss.py --model gpt2 --like runs/x

The settings (data_dir, seq_len, per_device_train_batch_size, eval_batches) come from the flags, then from the
--like run's run_config.json, then from train_hf.py's defaults. The logic lives in modeling/val_loss.py.
"""

import os
import sys

from modeling.config import ConfigError, parse_cli
from modeling.data import NoShardsError
from modeling.files import FileFormatError
from modeling.shards import ShardFormatError
from modeling.val_loss import ValLossArguments


def main(argv: list[str] | None = None) -> None:
    args = parse_cli(ValLossArguments, argv, description=__doc__.split("\n\n")[0])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import AutoModelForCausalLM

    from modeling.backends import build_accelerator
    from modeling.locate import NotFoundError, resolve_model
    from modeling.progress import quiet_library_bars
    from modeling.val_loss import compute_val_loss, resolve_settings

    quiet_library_bars()  # in a log: no "Loading weights" bar frames

    try:
        settings = resolve_settings(args)
        # Several processes and no GPU: they join over gloo on the CPU (otherwise each would evaluate everything alone).
        accelerator = build_accelerator(mixed_precision="bf16" if args.bf16 else "no")
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
            from modeling.files import write_json_atomic

            write_json_atomic(args.output, result)
            print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
