"""Finished runs side by side, from the files they leave: W&B's run comparison, offline.

For each metric key: every run's final and best value (best is the minimum for losses, the
maximum otherwise); the config keys whose values differ between the runs; and one small chart
per metric, one line per run, in a grid (compare.png). `train/loss` means cross-entropy per
token in an SFT run and the policy loss in an RL run, so the two never share a chart.
Reads each run directory's metrics.jsonl and config.yaml; needs no backend and no W&B.

    .venv/bin/python -m common.compare runs/sft-a runs/sft-b
    .venv/bin/python -m common.compare runs/rl-a runs/rl-b --keys reward/mean eval/accuracy
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from simple_parsing.helpers import field

from common.cli import run_main
from common.config import require
from common.evaluation import markdown_table
from common.runfiles import METRICS, json_safe, read_metrics, read_run_config
from common.runs import RUNS_DIR

DEFAULT_KEYS = ("train/loss", "eval/loss", "reward/mean", "rl/accuracy", "eval/accuracy")
# Identify a run rather than configure it; they differ between any two runs.
NOT_CONFIG = ("log_dir", "run_name")
# What the y axis measures, where a key's name alone does not say; per run kind where the
# same key means different things in SFT and RL runs.
Y_LABELS: dict[str, str | dict[str, str]] = {
    "train/loss": {"sft": "cross-entropy per token", "rl": "policy loss per token",
                   "run": "loss"},
    "eval/loss": "held-out NLL per token",
    "reward/mean": "mean reward per sample",
    "rl/accuracy": "share of rollouts correct",
    "eval/accuracy": "held-out accuracy",
}
KIND_NAMES = {"sft": "SFT", "rl": "RL", "run": "other"}

Curves = dict[str, list[tuple[int, float]]]


@dataclass
class Config:
    """Compare finished runs from their metrics.jsonl and config.yaml (no backend, no W&B)."""

    runs: list[str] = field(positional=True, nargs="+", metavar="RUN_DIR")
    """Run directories to compare."""
    keys: list[str] = field(default_factory=list)
    """Metric keys to compare. Default: those of train/loss, eval/loss, reward/mean,
    rl/accuracy, eval/accuracy that the runs logged."""
    out_dir: Path | None = None
    """Where compare.md, compare.json and compare.png go. Default: runs/compare-<time>."""


def main(cfg: Config) -> dict[str, Any]:
    dirs = [Path(d) for d in cfg.runs]
    names = [d.resolve().name for d in dirs]
    labels = [str(d) if names.count(n) > 1 else n for d, n in zip(dirs, names, strict=True)]
    curves = {label: run_curves(d) for label, d in zip(labels, dirs, strict=True)}
    configs = {label: read_run_config(d) for label, d in zip(labels, dirs, strict=True)}
    keys = chosen_keys(cfg.keys, curves)
    values = {label: {k: dict(zip(("final", "best"), final_and_best(c.get(k, []), k),
                                  strict=True)) for k in keys} for label, c in curves.items()}
    differences = config_differences(configs, ignore=NOT_CONFIG)
    text = report_text(keys, values, differences)

    out_dir = cfg.out_dir or RUNS_DIR / f"compare-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.md").write_text(f"# Comparison\n\n{text}\n")
    report = {"runs": {label: str(d) for label, d in zip(labels, dirs, strict=True)},
              "values": values, "config_differences": differences}
    (out_dir / "compare.json").write_text(json.dumps(json_safe(report), indent=2, default=str,
                                                     allow_nan=False) + "\n")
    kinds = {label: run_kind(config) for label, config in configs.items()}
    plot_curves(curves, kinds, keys, out_dir / "compare.png")
    print(text)
    print(f"wrote compare.md, compare.json and compare.png to {out_dir}")
    return report


def chosen_keys(asked: Sequence[str], curves: Mapping[str, Curves]) -> list[str]:
    """The keys asked for (each logged by some run), or the default keys the runs logged."""
    logged = sorted({k for c in curves.values() for k in c})
    missing = [k for k in asked if k not in logged]
    require(not missing, "keys", f"{missing} logged by none of the runs; they have {logged}")
    keys = list(asked) or [k for k in DEFAULT_KEYS if k in logged]
    require(bool(keys), "keys", f"none of {list(DEFAULT_KEYS)} is in the runs' metrics.jsonl; "
            "name the keys to compare")
    return keys


def report_text(keys: Sequence[str], values: Mapping[str, Mapping[str, dict[str, float]]],
                differences: Mapping[str, Mapping[str, Any]]) -> str:
    labels = list(values)
    metrics_table = markdown_table(
        ["run", *(f"{k} final / best" for k in keys)],
        [[label, *(_final_best(v[k]) for k in keys)] for label, v in values.items()])
    config_table = (markdown_table(["config", *labels],
                                   [[k, *(v[label] for label in labels)]
                                    for k, v in differences.items()])
                    if differences else "(the configs are identical)")
    return (f"{metrics_table}\n\nBest: min for losses, max otherwise.\n\n"
            f"Config differences:\n\n{config_table}")


def _final_best(value: dict[str, float]) -> str:
    if math.isnan(value["final"]):
        return "-"  # the run never logged this key
    return f"{value['final']:.4g} / {value['best']:.4g}"


def run_curves(run_dir: Path) -> Curves:
    """metrics.jsonl of a run as {key: [(step, value), ...]}, numeric values only."""
    if not (Path(run_dir) / METRICS).is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (is it a training run directory?)")
    curves: Curves = {}
    for row in read_metrics(Path(run_dir)):
        for key, value in row.items():
            if key not in ("step", "_time") and isinstance(value, int | float) \
                    and not isinstance(value, bool):
                curves.setdefault(key, []).append((int(row["step"]), float(value)))
    return curves


def run_kind(config: Mapping[str, Any]) -> str:
    """"rl" or "sft" from a run's recorded config (fields only that script has), else "run"."""
    if "group_size" in config:
        return "rl"
    if "epochs" in config:
        return "sft"
    return "run"


def final_and_best(points: Sequence[tuple[int, float]], key: str) -> tuple[float, float]:
    """(last value, best value) of a curve; best is the minimum for losses, else the maximum."""
    finite = [v for _, v in points if math.isfinite(v)]
    if not points or not finite:
        return math.nan, math.nan
    best = min(finite) if "loss" in key else max(finite)
    return points[-1][1], best


def config_differences(configs: Mapping[str, Mapping[str, Any]],
                       ignore: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """{key: {run: value}} for the config keys whose values are not all equal.

    A key missing from a run's config shows as None for that run.
    """
    keys = sorted({k for config in configs.values() for k in config} - set(ignore))
    differences = {}
    for key in keys:
        values = {run: config.get(key) for run, config in configs.items()}
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1:
            differences[key] = values
    return differences


def panels(curves: Mapping[str, Curves], kinds: Mapping[str, str], keys: Sequence[str]
           ) -> list[tuple[str, str | None, str]]:
    """(key, run kind or None for every run, title) per chart: a key whose meaning depends on
    the kind (a dict in Y_LABELS) gets a chart per kind of run that logged it."""
    out: list[tuple[str, str | None, str]] = []
    for key in keys:
        logged = sorted({kinds[label] for label, c in curves.items() if key in c})
        if isinstance(Y_LABELS.get(key), dict) and len(logged) > 1:
            out += [(key, kind, f"{key} ({KIND_NAMES[kind]} runs)") for kind in logged]
        else:
            out.append((key, logged[0] if len(logged) == 1 else None, key))
    return out


def y_label(key: str, kind: str | None) -> str:
    label = Y_LABELS.get(key, key.rsplit("/", 1)[-1].replace("_", " "))
    return label.get(kind or "run", key) if isinstance(label, dict) else label


def plot_curves(curves: Mapping[str, Curves], kinds: Mapping[str, str], keys: Sequence[str],
                path: Path) -> Any:
    """One small chart per metric (per run kind where the key's meaning differs) in a grid,
    one line per run, x = training step; saved to `path`. Returns the matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a training box
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    charts = panels(curves, kinds, keys)
    ncols = min(3, len(charts))
    nrows = math.ceil(len(charts) / ncols)
    legend_height = 0.3 * math.ceil(len(curves) / 3)  # inches: one legend row per 3 runs
    height = 3.2 * nrows + legend_height
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, height), squeeze=False)
    for ax, (key, kind, title) in zip(axes.flat, charts, strict=False):
        # A fixed color per run: a run missing from one chart must not shift the others'.
        for i, (label, run) in enumerate(curves.items()):
            if (points := run.get(key)) and kind in (None, kinds[label]):
                ax.plot([s for s, _ in points], [v for _, v in points], color=f"C{i % 10}",
                        marker="." if len(points) < 30 else None)
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("step")
        ax.set_ylabel(y_label(key, kind))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        low, high = ax.get_xlim()
        if high - low < 2:  # one step only: MaxNLocator falls back to fractional ticks
            ax.set_xlim(math.floor(low) - 1, math.ceil(high) + 1)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(charts):]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], color=f"C{i % 10}", label=label)
               for i, label in enumerate(curves)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 3),
               fontsize="small")
    fig.tight_layout(rect=(0, legend_height / height, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig


if __name__ == "__main__":
    raise SystemExit(run_main(main, Config))
