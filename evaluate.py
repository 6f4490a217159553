"""Score checkpoints (and the base model) on fixed held-out data, or compare finished runs.

For each model (the base model, then every --checkpoint) one answer per held-out problem is
sampled and scored with the training reward; every request is submitted before any is awaited.
Accuracy comes with a Wilson 95% interval, overall and per pair count. With --task chat the
score is the held-out NLL per reference token (teacher-forced through the sampling client's
compute_logprobs, no training client needed) and the exact-match rate of a sampled answer.
Results go to the console, eval.json, eval.md, accuracy.png and a W&B run (job_type "eval")
in the training run's group, which declares each checkpoint it scores as an input (the training
run's `model` artifact), so W&B's lineage graph reads training run -> checkpoint -> evaluation.
--compare reads finished runs' metrics.jsonl and config.yaml instead: final and best values, the
config keys that differ, and overlaid curves.

Deviations from the seed's "Testing" section: a fixed held-out set (data/arithmetic_heldout.jsonl,
100 problems per pair count, from a random stream of its own; one-pair problems can still equal a
training problem, as there are only 361 of them) instead of five fresh problems per look; every
answer is kept and scored, not just printed; accuracy carries confidence intervals; each problem
has its own sampling seed so a rerun repeats; the base model is the real base model (the seed
samples an untrained LoRA, which is the same thing at init); checkpoints are loaded from their
saved sampler weights, so evaluation runs any time after training, not inside the notebook.

    python evaluate.py --checkpoint runs/train_rl-tiny-chat-lr1e-03-bs8-s0-20261125-101500
    python evaluate.py --compare runs/sft-a runs/sft-b --compare_keys train/loss eval/loss
    python evaluate.py --checkpoint my-team/tinker-experiments/model-1a2b3c4d:final   # online
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from tinker import types

from common import rundir
from common.backend import connect, get_tokenizer, is_refusal, refusal_reason
from common.checkpoints import last_checkpoint
from common.cli import run_main
from common.config import (
    LOCAL_DEFAULT_MODEL,
    TINKER_DEFAULT_MODEL,
    ConfigError,
    ServiceConfig,
    TrackingConfig,
    as_dict,
    check_service,
    finite,
    require,
    resolve_backend,
)
from common.data import load_chat_data
from common.evaluation import (
    config_differences,
    final_and_best,
    markdown_table,
    run_curves,
    score_arithmetic,
    score_chat,
    spread,
    summarize,
    summarize_chat,
)
from common.runs import RUNS_DIR
from common.secrets import redact, redact_name
from common.tasks import DEFAULT_HELDOUT, load_heldout
from common.tracking import (
    CHECKPOINTS,
    RUN_ID,
    Tracker,
    checkpoint_metadata,
    default_project,
    model_artifact_name,
    read_checkpoints,
    read_group,
    read_run_config,
    resolve_wandb_mode,
)

DEFAULT_COMPARE_KEYS = ("train/loss", "eval/loss", "reward/mean", "rl/accuracy", "eval/accuracy")
# Identify a run rather than configure it; they differ between any two runs.
NOT_CONFIG = ("log_dir", "run_name")


@dataclass
class Config(ServiceConfig, TrackingConfig):
    """Held-out scores of checkpoints and their base model, or a comparison of runs."""

    # --- what to score
    checkpoint: list[str] = field(default_factory=list)
    """Sampler weights (tinker://...), run directories, or (online) W&B model artifacts
    (entity/project/model-<run id>:final): --checkpoint A B."""
    base_model: bool = True
    """Also score the untrained base model (--nobase_model to skip)."""
    compare: list[str] = field(default_factory=list)
    """Compare these run directories' metrics and configs instead of scoring models."""
    compare_keys: list[str] = field(default_factory=list)
    """Metric keys for --compare. Default: train/loss, eval/loss, reward/mean, rl/accuracy,
    eval/accuracy (those that exist)."""
    # --- data
    task: Literal["arithmetic", "chat"] = "arithmetic"
    """arithmetic: held-out problems, scored by reward; chat: NLL and exact match on --dataset."""
    heldout: str = str(DEFAULT_HELDOUT)
    """Held-out arithmetic problems (JSON lines with `numbers`)."""
    dataset: str = "foo"
    """Chat dataset for --task chat (shipped name, file, or hub org/name)."""
    dataset_split: str = "train"
    """Split of a hub dataset for --task chat."""
    num_problems: int | None = None
    """Score this many problems (or chat rows), spread evenly over the file. Default: all."""
    # --- sampling
    temperature: float = 0.3
    """Sampling temperature (the seed's 0.3)."""
    max_tokens: int = 256
    """Longest sampled answer (the seed's 256)."""
    concise_bonus: bool = False
    """Include the concise bonus in eval/reward, as train_rl --concise_bonus does."""


@dataclass(frozen=True)
class Target:
    """One model to score."""

    label: str
    base_model: str
    path: str | None = None
    """Sampler weights; None scores the base model itself."""
    run_dir: str | None = None
    artifact: str | None = None
    """The W&B `model` artifact of the weights: `name:alias` of the training run's checkpoint,
    or the artifact named on the command line."""
    artifact_metadata: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    """The metadata of the training run's artifact (rebuilt from its files), or None for a
    named artifact (used by name)."""
    group: str | None = None
    """The W&B group of the run that made the weights, if known."""
    project: str | None = None
    """The W&B project of the run that made the weights (where its artifact lives), if known."""
    entity: str | None = None


def validate(cfg: Config) -> None:
    require(not (cfg.compare and cfg.checkpoint), "compare",
            "compares finished runs from their files and scores no model; drop --checkpoint")
    require(bool(cfg.checkpoint) or cfg.base_model, "base_model",
            "nothing to score: pass --checkpoint, or keep --base_model")
    require(cfg.num_problems is None or cfg.num_problems >= 1, "num_problems",
            f"must be >= 1, got {cfg.num_problems}")
    require(cfg.max_tokens >= 1, "max_tokens", f"must be >= 1, got {cfg.max_tokens}")
    require(finite(cfg.temperature) and cfg.temperature >= 0, "temperature",
            f"must be a number >= 0, got {cfg.temperature}")
    check_service(cfg)


def main(cfg: Config) -> dict[str, Any]:
    if cfg.compare:
        return compare_runs(cfg)
    cfg = dataclasses.replace(cfg, backend=resolve_backend(cfg.backend, os.environ))
    validate(cfg)
    targets = eval_targets(cfg)  # run directories resolved: a bad one fails before any work
    cfg = dataclasses.replace(cfg, model=cfg.model or targets[-1].base_model)
    items = load_items(cfg)
    service = connect(cfg.backend, cfg.base_url)
    # Every client is created (and every checkpoint path checked) before the first sample.
    futures = [service.create_sampling_client(model_path=t.path) if t.path
               else service.create_sampling_client(base_model=t.base_model) for t in targets]
    clients = [sampling_client(f, t) for f, t in zip(futures, targets, strict=True)]
    params = types.SamplingParams(max_tokens=cfg.max_tokens, temperature=cfg.temperature,
                                  seed=cfg.seed)
    with open_tracker(cfg, targets) as tracker:
        declare_inputs(tracker, targets)
        results = []
        for target, client in zip(targets, clients, strict=True):
            print(f"scoring {target.label} on {len(items)} {cfg.task} items")
            rows, summary = score(cfg, client, items, params)
            results.append({"target": target, "rows": rows, "summary": summary})
        report = write_report(cfg, results, tracker)
    return report


def eval_targets(cfg: Config) -> list[Target]:
    """Base model(s) first, then the checkpoints in the order given."""
    default_model = cfg.model or (TINKER_DEFAULT_MODEL if cfg.backend == "tinker"
                                  else LOCAL_DEFAULT_MODEL)
    checkpoints = [checkpoint_target(arg, cfg.model, default_model, cfg.wandb_mode)
                   for arg in cfg.checkpoint]
    # One base per distinct base model among the checkpoints (usually just one).
    bases = list(dict.fromkeys(t.base_model for t in checkpoints)) or [default_model]
    targets = [Target(f"base:{m}", m) for m in bases] if cfg.base_model else []
    targets += checkpoints
    labels = [t.label for t in targets]
    return [dataclasses.replace(t, label=f"{t.label}#{labels[:i].count(t.label) + 1}")
            if labels.count(t.label) > 1 else t for i, t in enumerate(targets)]


def sampling_client(future: Any, target: Target) -> Any:
    try:
        return future.result()
    except Exception as exc:
        if not is_refusal(exc):
            raise
        flag = f"--checkpoint {target.path}" if target.path else f"--model {target.base_model}"
        raise ConfigError(f"{flag}: {refusal_reason(exc)}") from None


def checkpoint_target(arg: str, model: str | None, default_model: str,
                      wandb_mode: str = "disabled") -> Target:
    """A sampler path as given, a run directory's final sampler checkpoint and base model, or
    (online) a W&B `model` artifact's weights and base model."""
    if "://" in arg:
        # tinker://<run>/sampler_weights/final -> "<run>/final"
        parts = arg.split("://", 1)[1].strip("/").split("/")
        return Target(f"{parts[0]}/{parts[-1]}", model or default_model, path=arg)
    run_dir = Path(arg)
    if not run_dir.is_dir() and ":" in arg:
        return artifact_target(arg, model, default_model, wandb_mode)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"--checkpoint {arg}: neither a checkpoint path "
                                "(tinker://...), a run directory nor a W&B artifact "
                                "(entity/project/model-<run id>:final)")
    if not (run_dir / CHECKPOINTS).is_file():
        raise FileNotFoundError(f"--checkpoint {arg}: no {CHECKPOINTS} in {run_dir} (not a run "
                                "directory, or the run saved no checkpoint yet)")
    run_config = read_run_config(run_dir)
    recorded = run_config.get("model")
    require(model is None or recorded in (None, model), "model",
            f"{model} is not the base model of {arg}, which trained {recorded}; drop --model "
            "(a run directory brings its own)")
    sampler = last_checkpoint(run_dir, "sampler")
    if sampler is None:
        raise FileNotFoundError(f"{run_dir}: no sampler checkpoints in {CHECKPOINTS}")
    artifact = metadata = None
    if (run_dir / "wandb").is_dir() and (run_dir / RUN_ID).is_file():  # it logged to W&B
        state = next((c["path"] for c in read_checkpoints(run_dir) if c["kind"] == "state"
                      and (c["step"], c["name"]) == (sampler["step"], sampler["name"])), None)
        artifact = (f"{model_artifact_name((run_dir / RUN_ID).read_text().strip())}"
                    f":step-{sampler['step']:06d}")
        metadata = checkpoint_metadata(run_config, sampler["step"], sampler["name"], state,
                                       sampler["path"])
    group = (read_group(run_dir) or run_config.get("wandb_group") or run_config.get("run_name")
             or run_dir.resolve().name)  # the last two: runs made before wandb_group was kept
    project = run_config.get("wandb_project") or default_project(run_config.get("backend"))
    return Target(run_dir.resolve().name, model or recorded or default_model,
                  path=sampler["path"], run_dir=str(run_dir), artifact=artifact,
                  artifact_metadata=metadata, group=group, project=project,
                  entity=run_config.get("wandb_entity"))


def artifact_target(name: str, model: str | None, default_model: str, wandb_mode: str) -> Target:
    """A W&B `model` artifact (`entity/project/model-<run id>:alias`) as logged by the training
    scripts: its reference is the sampler weights, its metadata the base model."""
    if resolve_wandb_mode(wandb_mode) != "online":
        raise ConfigError(f"--checkpoint {name}: a W&B artifact name needs W&B online (a W&B "
                          "login and --wandb_mode auto/online); offline, pass the run directory "
                          "or the checkpoint path")
    import wandb

    artifact = wandb.Api().artifact(name, type="model")
    entry = artifact.manifest.entries.get("weights")
    if entry is None or not entry.ref:
        raise ConfigError(f"--checkpoint {name}: not a checkpoint reference artifact")
    producer = artifact.logged_by()
    return Target(artifact.name, model or artifact.metadata.get("base_model") or default_model,
                  path=entry.ref, artifact=name, group=producer.group if producer else None,
                  project=artifact.project, entity=artifact.entity)


def declare_inputs(tracker: Tracker, targets: list[Target]) -> None:
    """Each scored checkpoint as an input of this run: W&B's lineage from its training run."""
    for target in targets:
        if target.artifact and target.artifact_metadata is None:  # named on the command line
            tracker.use_artifact(target.artifact)
        elif target.artifact and target.path and target.artifact_metadata is not None:
            name, alias = target.artifact.split(":", 1)
            tracker.use_checkpoint(name, target.path, target.artifact_metadata, alias)


def load_items(cfg: Config) -> list[Any]:
    """Held-out problems or chat conversations, `num_problems` of them spread over the file."""
    if cfg.task == "arithmetic":
        items: list[Any] = load_heldout(cfg.heldout)
    else:
        items = load_chat_data(cfg.dataset, cfg.dataset_split, seed=cfg.seed).conversations
    return spread(items, cfg.num_problems or len(items))


def open_tracker(cfg: Config, targets: list[Target]) -> Tracker:
    """The eval run, in the group (and project) of the (first) training run it scores."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = redact(cfg.run_name or re.sub(r"[^A-Za-z0-9._+-]+", "-",
                                         f"evaluate-{cfg.model.rsplit('/', 1)[-1]}-{stamp}"))
    # By default where the (first) training run is: its group, and its project and entity, where
    # the checkpoint artifacts this run declares as inputs live.
    trained = next((t for t in targets if t.project), None)
    group = cfg.wandb_group or next((t.group for t in targets if t.group), None)
    project = cfg.wandb_project or (trained.project if trained else default_project(cfg.backend))
    entity = cfg.wandb_entity or (trained.entity if trained else None)
    run_dir = Path(cfg.log_dir) if cfg.log_dir else RUNS_DIR / redact_name(name)
    rundir.lock(run_dir)  # one process writes a run directory
    # One scoring pass: the summary is the values themselves, no best-of-steps.
    return Tracker(run_dir, project=project, mode=cfg.wandb_mode, run_name=name,
                   group=redact(group) if group else None, job_type="eval",
                   config=as_dict(cfg), entity=entity, tags=cfg.wandb_tags,
                   notes=cfg.wandb_notes, metric_summaries={},
                   incremental_tables=cfg.wandb_incremental_tables)


def score(cfg: Config, client: Any, items: list[Any], params: types.SamplingParams
          ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    tokenizer = get_tokenizer(client, cfg.model)
    if cfg.task == "arithmetic":
        rows = score_arithmetic(client, tokenizer, items, params, cfg.concise_bonus,
                                progress=True)
        return rows, summarize(rows)
    rows = score_chat(client, tokenizer, items, params, progress=True)
    return rows, summarize_chat(rows)


# ---------------------------------------------------------------------------------------
# Reporting: console, eval.json, eval.md, accuracy.png, W&B.


def write_report(cfg: Config, results: list[dict[str, Any]], tracker: Tracker) -> dict[str, Any]:
    run_dir = tracker.run_dir
    models = [{"label": r["target"].label, "path": r["target"].path,
               "base_model": r["target"].base_model, "run_dir": r["target"].run_dir,
               **r["summary"]} for r in results]
    report = {"task": cfg.task, "data": cfg.heldout if cfg.task == "arithmetic" else cfg.dataset,
              "sampling": {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens,
                           "seed": cfg.seed}, "models": models}
    (run_dir / "eval.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    text = results_markdown(cfg.task, models)
    (run_dir / "eval.md").write_text(f"# Evaluation ({cfg.task}, {report['data']})\n\n{text}\n")
    print(text)
    plot_accuracy(cfg.task, models, run_dir / "accuracy.png")
    print(f"wrote eval.json, eval.md and accuracy.png to {run_dir}")

    metrics = wandb_metrics(models)
    tracker.log(metrics, step=0)
    tracker.summary(**metrics, **{f"eval/{_key(m['label'])}/path": m["path"] for m in models})
    columns = ["model", *results[0]["rows"][0]]
    table = [[r["target"].label, *row.values()] for r in results for row in r["rows"]]
    tracker.log_table("samples", columns, table, step=0)
    tracker.log_image("eval/accuracy_plot", run_dir / "accuracy.png", step=0)
    return report


def _key(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._:+-]+", "_", label)


def wandb_metrics(models: list[dict[str, Any]]) -> dict[str, float]:
    """`eval/<label>/<metric>` per model, and plain `eval/<metric>` for the last model scored
    (the last checkpoint given, else the base model), the key sweeps and charts use."""
    def scalars(model: dict[str, Any]) -> dict[str, float]:
        values = {k: v for k, v in model.items() if isinstance(v, int | float)}
        for k, v in model.get("by_pair_count", {}).items():
            values[f"accuracy_pairs{k}"] = v["accuracy"]
        return values

    metrics = {f"eval/{k}": v for k, v in scalars(models[-1]).items()}
    for model in models:
        metrics.update({f"eval/{_key(model['label'])}/{k}": v for k, v in scalars(model).items()})
    return metrics


def _interval(value: float, low: float, high: float) -> str:
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def results_markdown(task: str, models: list[dict[str, Any]]) -> str:
    if task == "chat":
        return markdown_table(
            ["model", "nll/token", "exact match [95% CI]", "words", "tokens", "n"],
            [[m["label"], f"{m['nll']:.4f}", _interval(m["exact_match"], m["exact_match_low"],
              m["exact_match_high"]), f"{m['words']:.1f}", f"{m['tokens']:.1f}", m["n"]]
             for m in models])
    main = markdown_table(
        ["model", "accuracy [95% CI]", "reward", "format", "words", "tokens", "n"],
        [[m["label"], _interval(m["accuracy"], m["accuracy_low"], m["accuracy_high"]),
          f"{m['reward']:.3f}", f"{m['reward_format']:.3f}", f"{m['words']:.1f}",
          f"{m['tokens']:.1f}", m["n"]] for m in models])
    pair_counts = sorted({k for m in models for k in m["by_pair_count"]})
    by_pairs = markdown_table(
        ["model", *(f"{k} pair{'s' if k > 1 else ''}" for k in pair_counts)],
        [[m["label"], *(_interval(b["accuracy"], b["low"], b["high"]) + f" n={b['n']}"
                        if (b := m["by_pair_count"].get(k)) else "" for k in pair_counts)]
         for m in models])
    return f"{main}\n\nAccuracy by pair count:\n\n{by_pairs}"


def plot_accuracy(task: str, models: list[dict[str, Any]], path: Path) -> None:
    """Grouped bars: one group per pair count (and "all"), one bar per model, Wilson error bars."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a training box
    import matplotlib.pyplot as plt

    name = "accuracy" if task == "arithmetic" else "exact_match"
    groups: dict[str, list[tuple[float, float, float]]] = {"all": [
        (m[name], m[f"{name}_low"], m[f"{name}_high"]) for m in models]}
    for k in sorted({k for m in models for k in m.get("by_pair_count", {})}):
        groups[f"{k} pair{'s' if k > 1 else ''}"] = [
            (b["accuracy"], b["low"], b["high"]) if (b := m["by_pair_count"].get(k))
            else (math.nan, math.nan, math.nan) for m in models]
    fig, ax = plt.subplots(figsize=(2 + 0.6 * len(groups) * max(2, len(models)),
                                    4.5 + 0.25 * ((len(models) - 1) // 3)))
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        values = [groups[g][i] for g in groups]
        xs = [g + (i - (len(models) - 1) / 2) * width for g in range(len(groups))]
        errors = [[v - lo for v, lo, _ in values], [hi - v for v, _, hi in values]]
        ax.bar(xs, [v for v, _, _ in values], width, yerr=errors, capsize=3,
               label=model["label"])
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"{name.replace('_', ' ')} (95% Wilson CI)")
    # Below the axes: above them it would cover bars near 1.0.
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.08),
              ncol=min(len(models), 3))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------
# --compare: finished runs side by side, from their files.


def compare_runs(cfg: Config) -> dict[str, Any]:
    """Final and best values, differing config keys and overlaid curves of finished runs."""
    validate(cfg)
    dirs = [Path(d) for d in cfg.compare]
    names = [d.resolve().name for d in dirs]
    labels = [str(d) if names.count(n) > 1 else n for d, n in zip(dirs, names, strict=True)]
    curves = {label: run_curves(d) for label, d in zip(labels, dirs, strict=True)}
    configs = {label: read_run_config(d) for label, d in zip(labels, dirs, strict=True)}
    keys = cfg.compare_keys or [k for k in DEFAULT_COMPARE_KEYS
                                if any(k in c for c in curves.values())]
    missing = [k for k in cfg.compare_keys if not any(k in c for c in curves.values())]
    logged = sorted({k for c in curves.values() for k in c})
    require(not missing, "compare_keys", f"{missing} logged by none of the runs; they have "
            f"{logged}")
    require(bool(keys), "compare_keys", f"none of {list(DEFAULT_COMPARE_KEYS)} is in the runs' "
            "metrics.jsonl; name the keys to compare")
    values = {label: {k: dict(zip(("final", "best"), final_and_best(c.get(k, []), k),
                                  strict=True)) for k in keys} for label, c in curves.items()}
    differences = config_differences(configs, ignore=NOT_CONFIG)

    metrics_table = markdown_table(
        ["run", *(f"{k} final / best" for k in keys)],
        [[label, *(_final_best(v[k]) for k in keys)] for label, v in values.items()])
    config_table = (markdown_table(["config", *labels],
                                   [[k, *(v[label] for label in labels)]
                                    for k, v in differences.items()])
                    if differences else "(the configs are identical)")
    text = (f"{metrics_table}\n\nBest: min for losses, max otherwise.\n\n"
            f"Config differences:\n\n{config_table}")
    out_dir = Path(cfg.log_dir) if cfg.log_dir else (
        RUNS_DIR / f"compare-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.md").write_text(f"# Comparison\n\n{text}\n")
    report = {"runs": {label: str(d) for label, d in zip(labels, dirs, strict=True)},
              "values": values, "config_differences": differences}
    (out_dir / "compare.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    plot_curves(curves, keys, out_dir / "compare.png")
    print(text)
    print(f"wrote compare.md, compare.json and compare.png to {out_dir}")
    return report


def _final_best(value: dict[str, float]) -> str:
    if math.isnan(value["final"]):
        return "-"  # the run never logged this key
    return f"{value['final']:.4g} / {value['best']:.4g}"


def plot_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], keys: list[str],
                path: Path) -> None:
    """One subplot per metric key, one line per run, x = step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        # A fixed color per run: a run missing from one subplot must not shift the others'.
        for i, (label, run) in enumerate(curves.items()):
            if points := run.get(key):
                ax.plot([s for s, _ in points], [v for _, v in points], color=f"C{i % 10}",
                        label=label, marker="." if len(points) < 30 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
    handles = [plt.Line2D([], [], color=f"C{i % 10}", label=label)
               for i, label in enumerate(curves)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4),
               fontsize="small")
    fig.tight_layout(rect=(0, 0.08 + 0.04 * ((len(handles) - 1) // 4), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(run_main(main, Config))
