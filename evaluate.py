"""Score checkpoints (and the base model) on a task's held-out problems.

For each model (the base model, then every --checkpoint) one answer per held-out problem is
sampled and scored with the task's reward, as train_rl.py computes it (--task and its flags mean
what they mean there); requests go out a chunk ahead of the answers being read, so the progress
bar moves as answers arrive. Accuracy comes with a Wilson 95% interval, overall and per slice of
the task (pair count for arithmetic, a difficulty knob for reasoning-gym). With --task chat the
score is the held-out NLL per reference token of an SFT dataset (teacher-forced through the
sampling client's compute_logprobs) and the exact-match rate of a sampled answer.
Results go to the console, eval.json, eval.md, accuracy.png and a W&B run (job_type "eval") in the
training run's group, which declares each checkpoint it scores as an input (the training run's
`model` artifact): W&B's lineage graph reads training run -> checkpoint -> evaluation.

Deviations from the seed's "Testing" section: a fixed held-out set instead of five fresh problems
per look; every answer is kept and scored, not just printed; accuracy carries confidence
intervals; each problem has its own sampling seed, so a rerun repeats; checkpoints are loaded
from their saved sampler weights, so evaluation runs any time after training.

    python evaluate.py --checkpoint runs/<rl run dir>   # its final checkpoint, + the base model
    python evaluate.py --task dataset:data/arithmetic_qa.jsonl --checkpoint runs/<rl run dir>
    python evaluate.py --task chat --dataset foo --checkpoint runs/<sft run dir>
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
from typing import Any

from common.backend import (
    connect,
    get_tokenizer,
    is_refusal,
    refusal_reason,
    refusals_name,
    types,
)
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
    require_at_least,
    resolve_backend,
)
from common.data import load_chat_data
from common.evaluation import (
    markdown_table,
    part_order,
    score_chat,
    score_problems,
    spread,
    summarize,
    summarize_chat,
)
from common.runfiles import (
    CHECKPOINTS,
    RUN_ID,
    json_safe,
    read_checkpoints,
    read_group,
    read_run_config,
)
from common.runs import check_owner, run_dir_of, stop_on_signals
from common.secrets import redact
from common.tasks import TaskConfig, make_task
from common.tracking import (
    Tracker,
    check_wandb_settings,
    checkpoint_metadata,
    default_project,
    model_artifact_name,
    resolve_wandb_mode,
)


@dataclass
class Config(ServiceConfig, TaskConfig, TrackingConfig):
    """Held-out scores of checkpoints and their base model on a task (or an SFT chat dataset)."""

    # --- what to score
    checkpoint: list[str] = field(default_factory=list)
    """Sampler weights (tinker://...), run directories, or (online) W&B model artifacts
    (entity/project/model-<run id>:final): --checkpoint A B."""
    base_model: bool = True
    """Also score the untrained base model (--nobase_model to skip)."""
    dataset: str = "foo"
    """--task chat: the SFT dataset to score (shipped name, file, or hub org/name)."""
    dataset_split: str = "train"
    """--task chat: split of a hub dataset."""
    num_problems: int | None = None
    """Score this many held-out problems (or chat rows), spread evenly. Default: all."""
    # --- sampling
    temperature: float = 0.3
    """Sampling temperature (the seed's 0.3)."""
    max_tokens: int = 256
    """Longest sampled answer (the seed's 256)."""
    concise_bonus: bool = False
    """arithmetic: include the concise bonus in the reward, as train_rl does after
    --concise_bonus_after."""


@dataclass(frozen=True)
class Target:
    """One model to score."""

    label: str
    base_model: str
    path: str | None = None
    """Sampler weights; None scores the base model itself."""
    run_dir: str | None = None
    step: int | None = None
    """The training step of the checkpoint, when it came from a run directory."""
    artifact: str | None = None
    """The W&B `model` artifact of the weights (`name:alias`), if known."""
    artifact_metadata: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    """The training run's artifact metadata (rebuilt from its files); None for a named one."""
    group: str | None = None
    project: str | None = None
    entity: str | None = None


def validate(cfg: Config) -> None:
    require(bool(cfg.checkpoint) or cfg.base_model, "base_model",
            "nothing to score: pass --checkpoint, or keep --base_model")
    require_at_least(cfg, num_problems=1, max_tokens=1)
    require(finite(cfg.temperature) and cfg.temperature >= 0, "temperature",
            f"must be a number >= 0, got {cfg.temperature}")
    check_service(cfg)
    check_wandb_settings(cfg, ConfigError)


def main(cfg: Config) -> dict[str, Any]:
    cfg = dataclasses.replace(cfg, backend=resolve_backend(cfg.backend, os.environ))
    validate(cfg)
    targets = eval_targets(cfg)  # run directories resolved: a bad one fails before any work
    cfg = dataclasses.replace(cfg, model=cfg.model or targets[-1].base_model)
    if cfg.task == "chat":
        task, items = None, load_chat_data(cfg.dataset, cfg.dataset_split).conversations
    else:
        task = make_task(cfg, heldout_only=True)
        items = task.heldout()
    items = spread(items, cfg.num_problems or len(items))
    name = cfg.run_name or re.sub(r"[^A-Za-z0-9._+-]+", "-", f"evaluate-{short(cfg.model)}-"
                                  f"{datetime.now():%Y%m%d-%H%M%S}")
    run_dir = run_dir_of(cfg, redact(name))
    params = types.SamplingParams(max_tokens=cfg.max_tokens, temperature=cfg.temperature,
                                  seed=cfg.seed)
    with stop_on_signals(), connect(cfg.backend, cfg.base_url, cfg.threads) as service:
        # Every client is created (and every checkpoint path checked) before the first sample.
        futures = [service.create_sampling_client(model_path=t.path) if t.path
                   else service.create_sampling_client(base_model=t.base_model) for t in targets]
        clients = [sampling_client(f, t) for f, t in zip(futures, targets, strict=True)]
        check_owner(run_dir, "evaluate")  # never into a training run's directory
        with open_tracker(cfg, run_dir, redact(name), targets) as tracker:
            declare_inputs(tracker, targets)
            results = []
            for target, client in zip(targets, clients, strict=True):
                print(f"scoring {target.label} on {len(items)} held-out "
                      f"{'conversations' if task is None else 'problems'}")
                tokenizer = get_tokenizer(client, cfg.model)
                with refusals_name(f"--max_tokens {cfg.max_tokens}"):
                    if task is None:
                        rows = score_chat(client, tokenizer, items, params, progress=True)
                        summary = summarize_chat(rows)
                    else:
                        rows = score_problems(client, tokenizer, items, params, task,
                                              cfg.concise_bonus, progress=True)
                        summary = summarize(rows)
                results.append({"target": target, "rows": rows, "summary": summary})
            return write_report(cfg, results, tracker)


def short(model: str) -> str:
    return model.rstrip("/").rsplit("/", 1)[-1]


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
    group = read_group(run_dir) or run_config.get("wandb_group") or run_dir.resolve().name
    project = run_config.get("wandb_project") or default_project(run_config.get("backend"))
    return Target(run_dir.resolve().name, model or recorded or default_model,
                  path=sampler["path"], run_dir=str(run_dir), step=int(sampler["step"]),
                  artifact=artifact, artifact_metadata=metadata, group=group, project=project,
                  entity=run_config.get("wandb_entity"))


def artifact_target(name: str, model: str | None, default_model: str, wandb_mode: str) -> Target:
    """A W&B `model` artifact (`entity/project/model-<run id>:alias`) as the training scripts
    log it: its reference is the sampler weights, its metadata the base model and step."""
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
                  path=entry.ref, step=artifact.metadata.get("step"), artifact=name,
                  group=producer.group if producer else None, project=artifact.project,
                  entity=artifact.entity)


def declare_inputs(tracker: Tracker, targets: list[Target]) -> None:
    """Each scored checkpoint as an input of this run: W&B's lineage from its training run."""
    for target in targets:
        if target.artifact and target.artifact_metadata is None:  # named on the command line
            tracker.use_artifact(target.artifact)
        elif target.artifact and target.path and target.artifact_metadata is not None:
            artifact_name, alias = target.artifact.split(":", 1)
            tracker.use_checkpoint(artifact_name, target.path, target.artifact_metadata, alias)


def open_tracker(cfg: Config, run_dir: Path, name: str, targets: list[Target]) -> Tracker:
    """The eval run, in the group, project and entity of the (first) training run it scores,
    where the checkpoint artifacts it declares as inputs live."""
    trained = next((t for t in targets if t.project), None)
    group = cfg.wandb_group or next((t.group for t in targets if t.group), None)
    project = cfg.wandb_project or (trained.project if trained else default_project(cfg.backend))
    entity = cfg.wandb_entity or (trained.entity if trained else None)
    return Tracker(run_dir, project=project, mode=cfg.wandb_mode, run_name=name,
                   group=redact(group) if group else None, job_type="eval",
                   config={**as_dict(cfg), "script": "evaluate"}, entity=entity,
                   tags=cfg.wandb_tags, notes=cfg.wandb_notes,
                   incremental_tables=cfg.wandb_incremental_tables)


# ---------------------------------------------------------------------------------------
# Reporting: console, eval.json, eval.md, accuracy.png, W&B.


def write_report(cfg: Config, results: list[dict[str, Any]], tracker: Tracker) -> dict[str, Any]:
    run_dir = tracker.run_dir
    models = [{"label": r["target"].label, "path": r["target"].path, "step": r["target"].step,
               "base_model": r["target"].base_model, "run_dir": r["target"].run_dir,
               **r["summary"]} for r in results]
    data = (cfg.dataset if cfg.task == "chat" else cfg.heldout or
            ("data/arithmetic_heldout.jsonl" if cfg.task == "arithmetic" else cfg.task))
    report = redact({"task": cfg.task, "data": data,
                     "sampling": {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens,
                                  "seed": cfg.seed}, "models": models})
    (run_dir / "eval.json").write_text(json.dumps(json_safe(report), indent=2, default=str,
                                                  allow_nan=False) + "\n")
    text = results_markdown(cfg.task, models)
    (run_dir / "eval.md").write_text(redact(f"# Evaluation ({cfg.task}, {data})\n\n{text}\n"))
    print(text)
    plot_accuracy(models, plot_title(cfg, models, data), run_dir / "accuracy.png")
    print(f"wrote eval.json, eval.md and accuracy.png to {run_dir}")

    # W&B: each model's numbers at its checkpoint's training step (the base model at 0), the
    # per-slice and per-problem rows in tables; a checkpoint of unknown step: tables only.
    for result, model in zip(results, models, strict=True):
        parts = [{"part": k, **v} for k, v in model.get("by_part", {}).items()]
        scalars = {k: v for k, v in model.items()
                   if isinstance(v, int | float) and not isinstance(v, bool) and k != "step"}
        target = result["target"]
        tracker.log_evaluation(model["label"], target.step, scalars, parts, result["rows"],
                               plot=target.step is not None or target.path is None)
    tracker.log_image("evaluate/accuracy_plot", run_dir / "accuracy.png", step=len(models) - 1)
    return report


def _interval(value: float, low: float, high: float) -> str:
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def results_markdown(task: str, models: list[dict[str, Any]]) -> str:
    if task == "chat":
        return markdown_table(
            ["model", "nll/token", "exact match [95% CI]", "words", "tokens", "n"],
            [[m["label"], f"{m['nll']:.4f}", _interval(m["exact_match"], m["exact_match_low"],
              m["exact_match_high"]), f"{m['words']:.1f}", f"{m['tokens']:.1f}", m["n"]]
             for m in models])
    scored = "accuracy" in models[0]
    main_table = markdown_table(
        ["model", *(["accuracy [95% CI]"] if scored else []), "reward",
         *(["format"] if "reward_format" in models[0] else []), "words", "tokens", "n"],
        [[m["label"], *([_interval(m["accuracy"], m["accuracy_low"], m["accuracy_high"])]
                        if scored else []), f"{m['reward']:.3f}",
          *([f"{m['reward_format']:.3f}"] if "reward_format" in m else []), f"{m['words']:.1f}",
          f"{m['tokens']:.1f}", m["n"]] for m in models])
    parts = sorted({k for m in models for k in m.get("by_part", {})}, key=part_order)
    if not parts:
        return main_table
    by_part = markdown_table(
        ["model", *parts],
        [[m["label"], *(_interval(b["accuracy"], b["low"], b["high"]) + f" n={b['n']}"
                        if (b := m["by_part"].get(k)) else "" for k in parts)] for m in models])
    kind = "pair count" if task == "arithmetic" else "part"
    return f"{main_table}\n\nAccuracy by {kind}:\n\n{by_part}"


def plot_title(cfg: Config, models: list[dict[str, Any]], data: str) -> str:
    """What was scored, on what, and how it was sampled: the plot must stand on its own."""
    what = "conversations" if cfg.task == "chat" else "problems"
    scored = ", ".join(m["label"] for m in models if m["path"]) or "base model only"
    return redact(f"{cfg.task}: {models[0]['n']} held-out {what} ({Path(data).name})\n"
                  f"sampled at temperature {cfg.temperature:g}, max_tokens {cfg.max_tokens}, "
                  f"seed {cfg.seed}\ncheckpoint: {scored}")


def plot_accuracy(models: list[dict[str, Any]], title: str, path: Path) -> Any:
    """Grouped bars: one group per slice (and "all"), one bar per model, Wilson error bars;
    saved to `path`. Returns the matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a training box
    import matplotlib.pyplot as plt

    name = "exact_match" if "exact_match" in models[0] else "accuracy"
    nan = (math.nan, math.nan, math.nan)
    groups: dict[str, list[tuple[float, float, float]]] = {"all": [
        (m[name], m[f"{name}_low"], m[f"{name}_high"]) if name in m else nan for m in models]}
    for k in sorted({k for m in models for k in m.get("by_part", {})}, key=part_order):
        groups[k] = [(b["accuracy"], b["low"], b["high"]) if (b := m["by_part"].get(k)) else nan
                     for m in models]
    # At least 6.5 inches wide: the three-line title must fit above a single model's bars.
    fig, ax = plt.subplots(figsize=(max(6.5, 2 + 0.6 * len(groups) * max(2, len(models))),
                                    5 + 0.25 * ((len(models) - 1) // 3)))
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
    ax.set_title(title, fontsize="medium")
    # Below the axes: above them it would cover bars near 1.0.
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14),
              ncol=min(len(models), 3))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig


if __name__ == "__main__":
    raise SystemExit(run_main(main, Config))
