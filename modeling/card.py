"""The model card (README.md) of a checkpoint: ``huggingface_hub.ModelCard`` with model-index metadata.

Sections: metadata (license, datasets, pipeline_tag, tags, model-index with each result named with its convention
and the data it was measured on), architecture, the training recipe as run, results, the plots, how the numbers
were produced, usage. The facts come from ``run_files.RunFacts`` (the run's own files); a section or row whose facts
are absent is left out, never filled in.
"""

from __future__ import annotations

from modeling.hellaswag_data import PUBLISHED_REFERENCES
from modeling.run_files import (
    EVAL_PNG,
    LR_PNG,
    RunFacts,
    fmt_count,
    headline_evaluation,
    hellaswag_data_name,
    is_full_set,
    wall_time_to,
)


def _fmt_seconds(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _hardware(session: dict) -> dict:
    """A session's hardware record (run_record.hardware); run_info.json written before it was shared is mapped."""
    hw = session["hardware"]
    if "cpu_count" in hw:
        return hw
    old = {"gpus": [hw["name"]]} if hw.get("device") == "cuda" else {"cpu": hw.get("name"), "cpu_count": hw.get("cores")}
    return {**old, "num_processes": session.get("num_processes"), "distributed_type": session.get("distributed_type")}


def _hardware_text(hw: dict) -> str:
    if hw.get("gpus"):  # one GPU per process
        return f"{hw['num_processes']} x {hw['gpus'][0]} (CUDA {hw.get('cuda')})"
    return f"{hw['cpu']} CPU, {hw['cpu_count']} cores"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _table(rows: list[tuple[str, object]]) -> list[str]:
    return ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows if v is not None] + [""]


def model_index(facts: RunFacts, hub_dataset: str | None) -> list:
    """EvalResults: val loss at this step, eval_hellaswag.py's results (else the in-loop ones at this step)."""
    from huggingface_hub import EvalResult

    eval_results = []
    val = facts.last("val_loss")
    if val is not None and val["step"] == facts.step:
        eval_results.append(EvalResult(
            task_type="text-generation", task_name="Language modeling (next-token cross-entropy)",
            dataset_type=hub_dataset or "local", dataset_name=facts.val_description(),
            dataset_split="validation", metric_type="loss", metric_name="val loss (nats per token)",
            metric_value=round(val["val_loss"], 4)))
    # The model-index groups results by (task, dataset type, config, split, revision), not by dataset name: each
    # slice gets its own split (datasets' slice notation, e.g. validation[0:50]) and a local copy its file as the
    # config, or every evaluation would be listed under the first one's name. The headline comes first.
    headline = headline_evaluation(facts.evaluations)
    for entry in sorted(facts.evaluations, key=lambda e: e is not headline):
        data = hellaswag_data_name(entry.get("data_file"))
        split = "validation" if is_full_set(entry) else f"validation[{entry['offset']}:{entry['offset'] + entry['n']}]"
        for key, label in (("nanogpt", "nanogpt convention, our scorer"), ("lm-eval", "lm-eval convention, our scorer"),
                           ("harness", "lm-evaluation-harness")):
            if key not in entry["results"]:
                continue
            for metric in ("acc", "acc_norm"):
                eval_results.append(EvalResult(
                    task_type="text-generation", task_name="HellaSwag (zero-shot)", dataset_type="Rowan/hellaswag",
                    dataset_name=f"HellaSwag, {entry['n']:,} examples from offset {entry['offset']} of {data}",
                    dataset_config=entry.get("data_file"), dataset_split=split, metric_type=metric,
                    metric_name=f"{metric} ({label})", metric_value=round(entry["results"][key][metric], 4)))
    in_loop = facts.last("hellaswag")
    if not facts.evaluations and in_loop is not None and in_loop["step"] == facts.step:
        for key, convention in (("hellaswag", "nanogpt"), ("hellaswag_lm_eval", "lm-eval")):
            if in_loop.get(key) is not None:
                eval_results.append(EvalResult(
                    task_type="text-generation", task_name="HellaSwag (zero-shot)", dataset_type="Rowan/hellaswag",
                    dataset_name=f"HellaSwag, {facts.hellaswag_in_loop_description()}", dataset_split="validation",
                    metric_type="acc_norm", metric_name=f"acc_norm ({convention} convention, in-loop)",
                    metric_value=round(in_loop[key], 4)))
    return eval_results


def _intro(facts: RunFacts, name: str, n_params: int | None) -> list[str]:
    c = facts.config
    lines = [f"# {name}", ""]
    desc = f"A GPT-2 ({fmt_count(n_params)} parameters)" if n_params else "A GPT-2"
    desc += " language model trained from scratch with gpt2-hf (the stock `GPT2LMHeadModel`"
    desc += ", an Accelerate training loop"
    desc += f", tokens from {facts.data['text']}" if facts.data else ""
    desc += ")."
    tokens = facts.tokens_seen()
    if tokens and facts.step:
        desc += f" This is step {facts.step:,}"
        desc += f" of {c['max_steps']:,}" if c.get("max_steps") else ""
        desc += f", after {fmt_count(tokens)} training tokens."
    lines += [desc, ""]
    lines += ["It is a base model (next-token prediction only): no instruction tuning, no safety filtering; "
              "it continues text, and can state false things fluently.", ""]
    return lines


def _architecture(mc: dict, n_params: int | None) -> list[str]:
    if not mc:
        return []
    dropout = mc.get("resid_pdrop") if mc.get("resid_pdrop") == mc.get("attn_pdrop") == mc.get("embd_pdrop") else None
    return ["## Architecture", ""] + _table([
        ("model class", f"`{(mc.get('architectures') or ['GPT2LMHeadModel'])[0]}` (stock Transformers)"),
        ("parameters", f"{n_params:,} (input and output embeddings tied, counted once)" if n_params else None),
        ("layers", mc.get("n_layer")), ("attention heads", mc.get("n_head")), ("model width", mc.get("n_embd")),
        ("MLP width", mc.get("n_inner") or (4 * mc["n_embd"] if mc.get("n_embd") else None)),
        ("context length", mc.get("n_positions")),
        ("vocabulary", f"{mc['vocab_size']:,} (GPT-2 BPE)" if mc.get("vocab_size") else None),
        ("activation", f"`{mc['activation_function']}`" if mc.get("activation_function") else None),
        ("dropout", dropout), ("tied embeddings", "yes" if mc.get("tie_word_embeddings", True) else "no")])


def _optimizer_text(c: dict) -> str:
    adamw = (f"AdamW (beta1 {c['adam_beta1']}, beta2 {c['adam_beta2']}, eps {c['adam_epsilon']:g}), "
             f"weight decay {c['weight_decay']} on 2-D weights only")
    if c.get("optimizer", "adamw") == "muon":  # run_config.json from before optimizer: muon has no such field
        split = ", QKV as three matrices" if c.get("muon_split_qkv") else ""
        return (f"Muon (torch.optim.Muon) on the transformer blocks' matrices: lr {c['muon_learning_rate']:g}, momentum "
                f"{c['muon_momentum']}, weight decay {c['muon_weight_decay']}, LR scale {c['muon_adjust_lr']}{split}; "
                f"{adamw} at lr {c['learning_rate']:g} on embeddings, LayerNorms and biases; gradient clipping at "
                f"{c['max_grad_norm']}")
    return f"{adamw}, gradient clipping at {c['max_grad_norm']}"


def _schedule_text(c: dict) -> str:
    end = c.get("lr_decay_steps") or c["max_steps"]
    warmup = f"linear warmup over {c['warmup_steps']:,} steps to {c['learning_rate']:g}"
    if c.get("lr_scheduler_type", "cosine") == "wsd":
        start = end - round(c["decay_fraction"] * end)
        return (f"warmup-stable-decay: {warmup}, constant, then {c['wsd_decay_shape']} decay to {c['min_lr']:g} from "
                f"step {max(start, c['warmup_steps']):,} to step {end:,}")
    return f"{warmup}, cosine decay to {c['min_lr']:g} at step {end:,}"


def _training(facts: RunFacts) -> list[str]:
    """The recipe as run: batch, optimizer, schedule, precision; hardware and wall time from run_info.json."""
    if not facts.is_training_run:
        return []
    c, rc, tokens, tps = facts.config, facts.run_config, facts.tokens_seen(), facts.tokens_per_step()
    backend = rc.get("environment", {}).get("hardware", {}).get("distributed_type")
    bf16 = ("bf16 (DeepSpeed: bf16 module weights, fp32 master weights and optimizer state)"
            if str(backend).endswith("DEEPSPEED")  # older run_config.json files: "DistributedType.DEEPSPEED"
            else "bf16 autocast, fp32 weights and optimizer state")
    changes = rc.get("data_changes") or []  # resumed on other data with --allow_data_change
    rows = [("data", facts.data["text"] if facts.data else None),
            ("data changed on resume (--allow_data_change)", "; ".join(
                f"at step {c['step']:,}: {', '.join(c['differences'])}" for c in changes) if changes else None),
            ("tokens seen", f"{tokens:,}" if tokens else None),
            ("steps", f"{facts.step:,} of {c['max_steps']:,}" if facts.step else None),
            ("batch", f"{tps:,} tokens per optimizer step = {c['per_device_train_batch_size']} sequences x "
                      f"{c['seq_len']} tokens x {rc['gradient_accumulation_steps']} accumulation x "
                      f"{rc['num_processes']} process(es)"),
            ("optimizer", _optimizer_text(c)),
            ("schedule", _schedule_text(c)),
            ("precision", (bf16 if c.get("bf16") else "fp32")
                          + (", `torch.compile`" if c.get("compile") else "")),
            ("vocabulary while training", f"padded to a multiple of {c['pad_vocab_to_multiple_of']} (saved trimmed)"
             if c.get("pad_vocab_to_multiple_of", 1) > 1 else None),
            ("seed", c.get("seed"))]
    session = facts.session_for_step()
    if session:
        hw = _hardware(session)
        rows.append(("hardware", _hardware_text(hw)))
        kind = {"NO": "single process", "MULTI_CPU": "DDP over gloo", "MULTI_GPU": "DDP", "FSDP": "FSDP2",
                "DEEPSPEED": "DeepSpeed"}.get(hw["distributed_type"], hw["distributed_type"])
        rows.append(("processes", f"{hw['num_processes']} ({kind})"))
        rows.append(("software", ", ".join(f"{k} {v}" for k, v in session["versions"].items())))
    wall = wall_time_to(facts.sessions, facts.step) if facts.step else None
    if wall is not None:
        rows.append(("wall time", f"{_fmt_seconds(wall)} (training sessions up to this checkpoint, "
                                  "including evaluation and checkpointing)"))
    speed = facts.throughput()
    if speed:
        rows.append(("throughput", f"{speed['tokens_per_second']:,.0f} tokens/s (mean over {speed['steps']:,} "
                                   "logged steps, the first excluded; evaluation time not counted)"))
        if "mfu" in speed:
            basis = (f"of the given peak {c['peak_flops']:g} FLOP/s" if c.get("peak_flops") else
                     "of the GPU's bf16 dense peak" if session and _hardware(session).get("gpus") else
                     "of the matmul throughput measured on this CPU at start-up")
            rows.append(("MFU", f"{speed['mfu']:.1%} ({basis}; 6N + attention FLOPs per token)"))
    return ["## Training (as run)", ""] + _table(rows)


def _results(facts: RunFacts) -> list[str]:
    c, val, in_loop, lines = facts.config, facts.last("val_loss"), facts.last("hellaswag"), []
    result_lines: list[str] = []
    if val is not None:
        at = f"at step {val['step']:,}" + ("" if val["step"] == facts.step else " (the last evaluation)")
        result_lines += [f"- **Val loss {val['val_loss']:.4f}** {at}, on the {facts.val_description()}."]
        best = min((r for r in facts.records if r.get("val_loss") is not None), key=lambda r: r["val_loss"])
        if best["step"] != val["step"]:
            result_lines += [f"- Lowest val loss {best['val_loss']:.4f} at step {best['step']:,}."]
        if c.get("reference_val_loss") is not None:
            result_lines += [f"- The recipe's reference val loss is {c['reference_val_loss']:g} "
                             "(the reference run named in the recipe)."]
    train_loss = facts.last("loss")
    if train_loss is not None:
        result_lines += [f"- Train loss {train_loss['loss']:.4f} at step {train_loss['step']:,} (one batch)."]
    if result_lines:
        lines += ["## Results", ""] + result_lines + [""]
    if facts.evaluations:
        lines += ["### HellaSwag (zero-shot, `eval_hellaswag.py`)", "",
                  "| scorer | convention | acc | acc_norm | examples | data |", "|---|---|---|---|---|---|"]
        headline = headline_evaluation(facts.evaluations)
        for entry in sorted(facts.evaluations, key=lambda e: e is not headline):
            data = hellaswag_data_name(entry.get("data_file"))
            n = f"{entry['n']:,} from offset {entry['offset']}" + (" (headline)" if entry is headline and len(facts.evaluations) > 1 else "")
            for key, scorer, convention in (("nanogpt", "ours", "nanogpt"), ("lm-eval", "ours", "lm-eval"),
                                            ("harness", "lm-evaluation-harness", "lm-eval")):
                if key in entry["results"]:
                    m = entry["results"][key]
                    lines.append(f"| {scorer} | {convention} | {_pct(m['acc'])} | {_pct(m['acc_norm'])} | {n} | {data} |")
        harness = [e["results"]["harness"] for e in facts.evaluations if "disagreements_acc" in e["results"].get("harness", {})]
        lines.append("")
        what = ("the full validation split" if is_full_set(headline) else
                f"the largest evaluation recorded ({headline['n']:,} examples from offset {headline['offset']}); "
                "there is no full-split result yet")
        lines += [f"The headline result is {what}. Each row is its own evaluation; a smaller slice is a quick check, "
                  "not a replacement.", ""]
        for h in harness:
            lines += [f"Our scorer and lm-evaluation-harness differ on {h['disagreements_acc']} acc and "
                      f"{h['disagreements_acc_norm']} acc_norm predictions out of {h['n']:,} (largest log-likelihood "
                      f"difference {h['max_abs_logprob_diff']:.1e}).", ""]
    if in_loop is not None:
        lines += [f"In-loop HellaSwag at step {in_loop['step']:,} ({facts.hellaswag_in_loop_description()}): "
                  + ", ".join(f"{_pct(in_loop[k])} acc_norm ({conv} convention)" for k, conv in
                              (("hellaswag", "nanogpt"), ("hellaswag_lm_eval", "lm-eval")) if in_loop.get(k) is not None)
                  + ".", ""]
    if facts.evaluations or in_loop is not None:
        lines += ["For comparison (published, acc_norm): " + "; ".join(f"{label} {value:.2f}%" for label, value, _ in
                                                                       PUBLISHED_REFERENCES) + ". Chance is 25%.", ""]

    if facts.records:
        lines += ["## Training curves", "", f"![Loss and HellaSwag against steps]({EVAL_PNG})", "",
                  f"![Learning rate per step]({LR_PNG})", ""]
    return lines


def _method(facts: RunFacts) -> list[str]:
    in_loop = facts.last("hellaswag")
    how = []
    if facts.records:
        how.append("Train loss, learning rate, tokens, throughput and MFU are the trainer's own log "
                   "(`metrics.jsonl`, one line per logged step); val loss is the mean next-token cross-entropy "
                   f"over the {facts.val_description() or 'val split'}, the same tokens at every evaluation.")
    if facts.evaluations or in_loop is not None:
        how.append("HellaSwag is zero-shot: each of the four endings is scored by its log-likelihood after the "
                   "context. Two conventions are in use and both are reported. **nanogpt** (build-nanogpt, llm.c): "
                   "context `ctx`, ending `\" \" + ending`, acc_norm = the highest mean log-likelihood per token. "
                   "**lm-eval** (lm-evaluation-harness `hellaswag`): context `activity_label: ctx_a Ctx_b` with "
                   "`[tags]` cleaned, acc_norm = the highest log-likelihood per character of the ending. "
                   "acc is the highest summed log-likelihood in both.")
    if facts.evaluations and any(e.get("data_file") for e in facts.evaluations):
        how.append("The local HellaSwag copy has lost the original `ctx_a`/`ctx_b` split, so its scores are close to, "
                   "not exactly, those on `Rowan/hellaswag`.")
    return ["## How the numbers were produced", ""] + [f"- {h}" for h in how] + [""] if how else []


def _usage(where: str) -> list[str]:
    return ["## Usage", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline", "",
            f'model = AutoModelForCausalLM.from_pretrained("{where}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
            f'generator = pipeline("text-generation", model="{where}")',
            'print(generator("Hello, I\'m a language model,", max_new_tokens=30, do_sample=True, top_k=50)[0]["generated_text"])',
            "```", "", "HellaSwag with lm-evaluation-harness (its built-in task reads `Rowan/hellaswag` from the Hub):",
            "", "```bash", f"lm_eval --model hf --model_args pretrained={where},dtype=float32 --tasks hellaswag --device cuda",
            "```", "", "or with the two conventions side by side, from a gpt2-hf checkout:", "", "```bash",
            f"python eval_hellaswag.py --model {where} --backend both", "```", ""]


def build_model_card(facts: RunFacts, *, repo_id: str | None = None, license: str = "mit",
                     dataset_id: str | None = None, model_name: str | None = None):
    """A ``huggingface_hub.ModelCard`` of the checkpoint ``facts`` describe (run_files.RunFacts).

    ``repo_id`` goes into the usage lines (default: a placeholder path); ``dataset_id`` names the training data in
    the metadata when the shards were made from local files."""
    from huggingface_hub import ModelCard, ModelCardData

    name = model_name or (repo_id.split("/")[-1] if repo_id else facts.config.get("run_name") or facts.checkpoint.name)
    hub_dataset = dataset_id or (facts.data or {}).get("hub_id")
    eval_results = model_index(facts, hub_dataset)
    card_data = ModelCardData(
        license=license, language="en", library_name="transformers", pipeline_tag="text-generation",
        datasets=[hub_dataset] if hub_dataset else None,
        tags=["gpt2", "causal-lm", "text-generation", "pretrained-from-scratch", "gpt2-hf"],
        model_name=name, eval_results=eval_results or None)
    lines = (_intro(facts, name, facts.n_params) + _architecture(facts.model_config, facts.n_params)
             + _training(facts) + _results(facts) + _method(facts) + _usage(repo_id or "path/to/this/folder"))
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))
