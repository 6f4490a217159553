"""common/compare.py (`python -m common.compare RUN_DIR...`): curves, finals and bests, config
differences, and a compare.png a reader understands without the code. The run directories here
are written by hand (the files are all the command reads); tests/test_evaluate.py compares two
real SFT runs."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from matplotlib.ticker import MaxNLocator

from common import compare
from common.cli import parse_config
from common.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(run_dir: Path, config: dict, rows: list[dict]) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


@pytest.fixture
def sft_and_rl(tmp_path) -> list[Path]:
    """An SFT run (cross-entropy train/loss, eval/loss) and an RL run (policy train/loss,
    reward/mean, rl/accuracy, eval/accuracy), 5 and 4 steps."""
    sft = write_run(tmp_path / "sft", {"epochs": 1, "lr": 2e-3, "seed": 0, "log_dir": "a"},
                    [{"step": s, "train/loss": 2.0 / s, "eval/loss": 2.5 / s}
                     for s in range(1, 6)])
    rl = write_run(tmp_path / "rl", {"group_size": 8, "lr": 2e-4, "seed": 0, "log_dir": "b"},
                   [{"step": s, "train/loss": -0.01 * s, "reward/mean": 0.1 * s,
                     "rl/accuracy": 0.05 * s, "eval/accuracy": 0.2 + 0.1 * s}
                    for s in range(1, 5)])
    return [sft, rl]


def test_compare_writes_tables_and_a_labelled_chart_per_metric(sft_and_rl, tmp_path):
    out = tmp_path / "cmp"
    report = compare.main(compare.Config(runs=[str(d) for d in sft_and_rl], out_dir=out))
    assert list(report["values"]["sft"]) == list(compare.DEFAULT_KEYS)
    assert report["values"]["sft"]["train/loss"] == {"final": 0.4, "best": 0.4}
    assert report["values"]["rl"]["eval/accuracy"]["best"] == pytest.approx(0.6)
    assert math.isnan(report["values"]["sft"]["reward/mean"]["final"])
    assert report["config_differences"] == {"epochs": {"sft": 1, "rl": None},
                                            "group_size": {"sft": None, "rl": 8},
                                            "lr": {"sft": 2e-3, "rl": 2e-4}}
    text = (out / "compare.md").read_text()
    assert "| sft " in text and "| rl " in text and "log_dir" not in text
    assert json.loads((out / "compare.json").read_text())["runs"]["rl"] == str(sft_and_rl[1])
    assert (out / "compare.png").read_bytes().startswith(PNG_MAGIC)


def test_the_chart_grid_keeps_sft_and_rl_losses_apart(sft_and_rl):
    curves = {d.name: compare.run_curves(d) for d in sft_and_rl}
    kinds = {"sft": "sft", "rl": "rl"}
    fig = compare.plot_curves(curves, kinds, list(compare.DEFAULT_KEYS),
                              sft_and_rl[0].parent / "c.png")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    # train/loss split in two, then one chart per other key: 6 charts in a 3-wide grid.
    assert len(axes) == 6 and len(fig.axes) == 6
    assert [ax.get_title() for ax in axes] == [
        "train/loss (RL runs)", "train/loss (SFT runs)", "eval/loss", "reward/mean",
        "rl/accuracy", "eval/accuracy"]
    assert [ax.get_ylabel() for ax in axes] == [
        "policy loss per token", "cross-entropy per token", "held-out NLL per token",
        "mean reward per sample", "share of rollouts correct", "held-out accuracy"]
    for ax in axes:
        assert ax.get_xlabel() == "step"
        assert isinstance(ax.xaxis.get_major_locator(), MaxNLocator)
        assert all(float(t).is_integer() for t in ax.get_xticks())
    rl_loss, sft_loss = axes[0].get_lines(), axes[1].get_lines()
    assert len(rl_loss) == len(sft_loss) == 1
    assert list(rl_loss[0].get_xdata()) == [1, 2, 3, 4]
    assert list(sft_loss[0].get_xdata()) == [1, 2, 3, 4, 5]
    width, height = fig.get_size_inches()
    assert width <= 13 and height >= 6  # a grid of small charts, not one long strip
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {"sft", "rl"}


def test_runs_of_one_kind_share_a_chart(tmp_path):
    runs = [write_run(tmp_path / n, {"epochs": 1, "lr": lr}, [{"step": 1, "train/loss": 1.0}])
            for n, lr in (("a", 1e-3), ("b", 2e-3))]
    fig = compare.plot_curves({r.name: compare.run_curves(r) for r in runs},
                              {"a": "sft", "b": "sft"}, ["train/loss"], tmp_path / "c.png")
    (ax,) = fig.axes
    assert ax.get_title() == "train/loss" and ax.get_ylabel() == "cross-entropy per token"
    assert len(ax.get_lines()) == 2


def test_run_curves_final_and_best(tmp_path):
    rows = [{"step": 1, "train/loss": 2.0, "_time": 0}, {"step": 2, "train/loss": 1.0},
            {"step": 3, "train/loss": 1.5, "eval/accuracy": 0.25, "note": "text"}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{cut")
    curves = compare.run_curves(tmp_path)
    assert curves == {"train/loss": [(1, 2.0), (2, 1.0), (3, 1.5)], "eval/accuracy": [(3, 0.25)]}
    assert compare.final_and_best(curves["train/loss"], "train/loss") == (1.5, 1.0)
    assert compare.final_and_best([(1, 0.5), (2, 0.25)], "eval/accuracy") == (0.25, 0.5)
    assert all(math.isnan(v) for v in compare.final_and_best([], "eval/accuracy"))
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        compare.run_curves(tmp_path / "elsewhere")


def test_config_differences():
    configs = {"a": {"lr": 1e-3, "seed": 0, "log_dir": "x"}, "b": {"lr": 2e-3, "seed": 0}}
    assert compare.config_differences(configs, ignore=["log_dir"]) == {
        "lr": {"a": 1e-3, "b": 2e-3}}
    assert compare.config_differences(configs) == {"log_dir": {"a": "x", "b": None},
                                                   "lr": {"a": 1e-3, "b": 2e-3}}


def test_flags_parse_with_run_directories_first():
    cfg = parse_config(compare.Config, ["runs/a", "runs/b", "--keys", "train/loss", "eval/loss"])
    assert cfg.runs == ["runs/a", "runs/b"] and cfg.keys == ["train/loss", "eval/loss"]
    with pytest.raises(ConfigError, match="RUN_DIR"):
        parse_config(compare.Config, [])


def test_unknown_keys_are_named(sft_and_rl, tmp_path):
    with pytest.raises(ConfigError, match=r"--keys: \['train/los'\] logged by none of the runs"):
        compare.main(compare.Config(runs=[str(d) for d in sft_and_rl], keys=["train/los"],
                                    out_dir=tmp_path / "cmp"))
    assert not (tmp_path / "cmp").exists()


def test_the_module_runs_as_a_command(sft_and_rl, tmp_path):
    done = subprocess.run([sys.executable, "-m", "common.compare", *map(str, sft_and_rl),
                           "--keys", "train/loss", "--out_dir", str(tmp_path / "cmp")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "train/loss final / best" in done.stdout
    assert (tmp_path / "cmp" / "compare.png").is_file()
    missing = subprocess.run([sys.executable, "-m", "common.compare", str(tmp_path / "nope")],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2
    assert missing.stderr.strip().endswith("nope: no metrics.jsonl (is it a training run "
                                           "directory?)")


def test_a_chart_of_one_step_still_has_whole_step_ticks(tmp_path):
    curves = {"rl": {"eval/accuracy": [(10, 0.59)]}}
    fig = compare.plot_curves(curves, {"rl": "rl"}, ["eval/accuracy"], tmp_path / "c.png")
    ticks = fig.axes[0].get_xticks()
    assert 10 in ticks and all(float(t).is_integer() for t in ticks)
