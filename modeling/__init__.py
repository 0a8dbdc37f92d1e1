"""gpt2-hf's library: the top-level scripts are thin CLIs over these modules, one concept each, imports pointing
down (no cycle: tests/test_imports.py).

Data side: ``sources`` (documents from the Hub or local parquet/jsonl/json/txt) -> ``tokenizer`` (GPT-2's BPE,
tiktoken and Transformers from one verified source, offline) -> ``prepare`` (tokenize-and-shard, resumable) ->
``shards`` (llm.c's ``.bin`` format) <- ``verify`` (a shard folder against its ``manifest.json``) <- ``data`` (the
training windows: ``TokenWindows``, the seeded shard-block sampler, ``train_loader_for``, ``endless_batches``,
``TimedBatches``). Model side: ``model`` (presets, GPT-2 init, vocab padding, FLOPs), ``lm_loss`` (the training
forward with the chunked loss) and ``attention`` (causal SDPA, no mask), ``optimizer`` (AdamW, or Muon + AdamW),
``schedule`` (cosine / WSD and extending them). Run side: ``config`` (``TrainingConfig``, presets, ``ConfigError``),
``trainer`` (the Accelerate loop, being reshaped into a ``TrainingRun``), ``backends`` (what DDP/FSDP2/DeepSpeed
need: ``training_accelerator``, ``end_training``), ``hardware`` (peak FLOP/s for MFU, the matmul probe, the fast
paths a run takes), ``run_files`` (torch-free: every file name of a run and a checkpoint, and their readers and
writers: the metrics log, ``run_info.json``, ``hellaswag_results.json``, ``RunFacts``, ``checkpoint_step``),
``checkpoint`` (complete checkpoints, rotation, the resume policy: ``TrainState``, ``start_or_resume``, ``restore``,
``check_same_run``), ``faults`` (signals, non-finite steps, failed processes), ``run_lock`` (one run per
``output_dir``), ``run_record`` (what produced a run), ``progress`` (bars or status lines), ``profiling``
(``--profile_steps``), ``memory`` (peak memory per log), ``preflight`` (``--preflight``: a run measured before it is
started), ``files`` (reading JSON and text so a damaged file ends in one line, atomic writes). Evaluation:
``val_loss`` (the val windows, for any model), ``hellaswag_data`` (examples, conventions) -> ``hellaswag`` (the fast
scorer) and ``harness`` (lm-evaluation-harness on ``lm_eval_tasks/``). Results and interop: ``plots`` (eval.png,
lr_schedule.png), ``card`` (the model card, from ``RunFacts``), ``report`` (plots and card of a run or checkpoint,
``python -m modeling.report``), ``hub`` (the upload folder, the upload, a repo id resolvable offline), ``locate``
("a local path or a Hub id?"), ``convert`` (nanoGPT / build-nanogpt / llm.c in and out). Presets ship in
``configs/``. The manual is ``docs/``.
"""
