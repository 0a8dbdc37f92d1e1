"""A run's plots: eval.png (loss and HellaSwag against steps) and lr_schedule.png (the learning rate each logged
step used), drawn from the run's facts (modeling/run_files.py: RunFacts) with matplotlib, files only.
"""

from __future__ import annotations

from pathlib import Path

from modeling.hellaswag_data import PUBLISHED_REFERENCES
from modeling.run_files import EVAL_PNG, LR_PNG, RunFacts, fmt_count


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def _wrap(text: str, width: int = 80) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text.replace("`", ""), width))  # markdown quotes are for the card, not plots


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_eval(records: list[dict], path: str | Path, *, reference_val_loss: float | None = None,
              val_description: str | None = None, hellaswag_description: str | None = None,
              final_hellaswag: list[dict] | None = None, title: str | None = None) -> Path:
    """eval.png: loss against steps (tokens on the top axis) and HellaSwag against steps in both conventions."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plt = _pyplot()
    fig, (ax_loss, ax_hs) = plt.subplots(1, 2, figsize=(14, 5.6), layout="constrained")
    if title:
        fig.suptitle(title, fontsize=13)

    train = [r for r in records if r.get("loss") is not None]
    steps = [r["step"] for r in train]
    losses = [r["loss"] for r in train]
    if len(train) > 200:  # thousands of noisy steps: faint raw curve, readable trend on top
        window = max(len(train) // 100, 5)
        ax_loss.plot(steps, losses, lw=0.6, alpha=0.3, color="C0", label="train loss (each step)")
        ax_loss.plot(steps, _moving_average(losses, window), lw=1.5, color="C0",
                     label=f"train loss (mean of last {window} logged steps)")
    elif train:
        ax_loss.plot(steps, losses, lw=1.2, color="C0", label="train loss")
    val = [r for r in records if r.get("val_loss") is not None]
    if val:
        ax_loss.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", ms=4, lw=1.5, color="C3",
                     label="val loss")
    if reference_val_loss is not None:
        ax_loss.axhline(reference_val_loss, ls="--", lw=1.2, color="0.35",
                        label=f"reference val loss: {reference_val_loss:g}")
    ax_loss.set_yscale("log")
    ax_loss.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)))
    ax_loss.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax_loss.yaxis.set_minor_formatter(NullFormatter())
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("cross-entropy loss (nats per token, log scale)")
    ax_loss.set_title("Loss" + (f"\n{_wrap('val: ' + val_description)}" if val_description else ""), fontsize=11)
    ax_loss.grid(True, which="major", alpha=0.3)
    ax_loss.set_xlim(left=0)
    tokens_per_step = train[-1]["tokens"] / train[-1]["step"] if train and train[-1].get("tokens") else None
    if tokens_per_step:
        top = ax_loss.secondary_xaxis("top", functions=(lambda s: s * tokens_per_step, lambda t: t / tokens_per_step))
        top.xaxis.set_major_formatter(FuncFormatter(lambda t, _: fmt_count(t)))  # 10B, not EngFormatter's 10G
        top.set_xlabel("tokens seen")
    if train or val or reference_val_loss is not None:
        ax_loss.legend(loc="best", fontsize=9)

    series = (("hellaswag", "nanogpt", "C0"), ("hellaswag_lm_eval", "lm-eval", "C1"))
    colors = {convention: color for _, convention, color in series}
    plotted = False
    for key, convention, color in series:
        points = [r for r in records if r.get(key) is not None]
        if points:
            plotted = True
            ax_hs.plot([r["step"] for r in points], [100 * r[key] for r in points], "o-", ms=4, lw=1.5, color=color,
                       label=f"in-loop, {convention}")
    for entry in final_hellaswag or []:
        for convention in ("nanogpt", "lm-eval"):
            if convention in entry["results"]:
                ax_hs.plot([entry["step"]], [100 * entry["results"][convention]["acc_norm"]], "*", ms=13,
                           color=colors[convention], markeredgecolor="black",
                           label=f"eval_hellaswag.py, {convention}, {entry['n']:,} examples")
                plotted = True
    for label, value, convention in PUBLISHED_REFERENCES:
        ax_hs.axhline(value, ls="--" if convention else "-.", lw=1.2, color=colors.get(convention, "0.35"),
                      label=f"{label}: {value:g}%")
    ax_hs.axhline(25.0, ls=":", lw=1.2, color="black", label="chance: 25%")
    if not plotted:
        ax_hs.text(0.5, 0.5, "no HellaSwag results in this run\n(hellaswag_steps: 0; run eval_hellaswag.py)",
                   transform=ax_hs.transAxes, ha="center", va="center", fontsize=10, color="0.3")
    ax_hs.set_xlabel("optimizer step")
    ax_hs.set_ylabel("HellaSwag acc_norm (%)")
    ax_hs.set_title("HellaSwag zero-shot acc_norm" + (f"\n{_wrap('in-loop: ' + hellaswag_description)}"
                                                      if hellaswag_description else ""), fontsize=11)
    ax_hs.grid(True, alpha=0.3)
    if steps:
        ax_hs.set_xlim(0, max(steps) * 1.03)
    ax_hs.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}%"))
    ax_hs.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=8.5, frameon=False)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_lr(records: list[dict], path: str | Path, *, warmup_steps: int | None = None, title: str | None = None) -> Path:
    """lr_schedule.png: the learning rate each logged step actually used."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2), layout="constrained")
    points = [r for r in records if r.get("lr") is not None]
    muon = [r for r in records if r.get("muon_lr") is not None]  # optimizer: muon logs both optimizers' LR
    ax.plot([r["step"] for r in points], [r["lr"] for r in points], lw=1.5, color="C2",
            label="learning rate used" + (" by AdamW (embeddings, LayerNorms, biases)" if muon else ""))
    if muon:
        ax.plot([r["step"] for r in muon], [r["muon_lr"] for r in muon], lw=1.5, color="C4",
                label="learning rate used by Muon (block matrices, before its per-shape scale)")
    if warmup_steps and points and warmup_steps < points[-1]["step"]:
        # Step s (counted from 1) runs with the schedule's value at s - 1: the peak comes at warmup_steps + 1.
        ax.axvline(warmup_steps + 1, ls=":", color="0.35", label=f"peak, after {warmup_steps:,} warmup steps")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.set_title(title or "Learning rate per step (as logged in metrics.jsonl)")
    if points:
        ax.legend(loc="upper right", fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(facts: RunFacts, dest: str | Path) -> list[Path]:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if not facts.records:
        return []
    name = facts.config.get("run_name")
    eval_png = plot_eval(facts.records, dest / EVAL_PNG, reference_val_loss=facts.config.get("reference_val_loss"),
                         val_description=facts.val_description(),
                         hellaswag_description=facts.hellaswag_in_loop_description(),
                         final_hellaswag=facts.final_hellaswag(),
                         title=f"{name}: up to step {facts.step:,}" if name and facts.step else None)
    lr_png = plot_lr(facts.records, dest / LR_PNG, warmup_steps=facts.config.get("warmup_steps"))
    return [eval_png, lr_png]
