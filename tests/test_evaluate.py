"""evaluate.py on the local backend: a tiny SFT checkpoint scored against the base model, checked
from the files and the offline W&B run it leaves behind; comparing the two SFT runs with
`python -m common.compare`; and clear errors."""

import json
import math
from pathlib import Path

import pytest

import evaluate
import train_sft
from common import compare
from common.cli import parse_config
from common.config import ConfigError
from common.data import DatasetError
from common.evaluation import wilson_interval
from tests.wandb_records import read_offline_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory) -> list[Path]:
    """A tiny SFT run on arithmetic solutions, and one on foo with another lr (to compare)."""
    root = tmp_path_factory.mktemp("sft")
    train_sft.main(train_sft.Config(
        backend="local", dataset="arithmetic-solutions", dataset_size=16, max_steps=2,
        batch_size=4, log_dir=root / "sft-a", wandb_mode="offline", sample_every=0,
        eval_fraction=0.0))
    train_sft.main(train_sft.Config(
        backend="local", dataset="foo", max_steps=2, batch_size=4, lr=1e-3,
        log_dir=root / "sft-b", wandb_mode="disabled", sample_every=0, eval_every=1))
    return [root / "sft-a", root / "sft-b"]


@pytest.fixture(scope="module")
def arithmetic_eval(sft_runs, tmp_path_factory) -> tuple[dict, Path]:
    run_dir = tmp_path_factory.mktemp("eval") / "run"
    report = evaluate.main(evaluate.Config(
        backend="local", checkpoint=[str(sft_runs[0])], num_problems=12, max_tokens=32,
        wandb_mode="offline", log_dir=run_dir))
    return report, run_dir


def test_eval_json_agrees_with_every_sampled_row(arithmetic_eval, sft_runs):
    report, run_dir = arithmetic_eval
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved["models"] == json.loads(json.dumps(report["models"]))
    assert [m["label"] for m in saved["models"]] == ["base:tiny-instruct", "sft-a"]
    final = [c for c in read_jsonl(sft_runs[0] / "checkpoints.jsonl")
             if c["kind"] == "sampler"][-1]["path"]
    assert [m["path"] for m in saved["models"]] == [None, final]
    samples = [r for r in read_jsonl(run_dir / "samples.jsonl")
               if r["table"] == "evaluate/samples"]
    for model in saved["models"]:
        rows = [r for r in samples if r["model"] == model["label"]]
        correct = sum(r["correct"] for r in rows)
        assert model["n"] == len(rows) == 12
        assert model["accuracy"] == correct / 12
        assert (model["accuracy_low"], model["accuracy_high"]) == pytest.approx(
            wilson_interval(correct, 12))
        assert model["reward"] == pytest.approx(sum(r["reward"] for r in rows) / 12)
        assert model["tokens"] == pytest.approx(sum(r["tokens"] for r in rows) / 12)
        assert all(r["tokens"] <= 32 for r in rows)
        # num_problems spreads over the file, which is sorted by pair count.
        assert {k: v["n"] for k, v in model["by_part"].items()} == {
            "1 pair": 4, "2 pairs": 4, "3 pairs": 4}
        for k, part in model["by_part"].items():
            hits = sum(r["correct"] for r in rows if r["part"] == k)
            assert (part["low"], part["high"]) == pytest.approx(wilson_interval(hits, 4))
    # The same seeds give the same problems and answers to both models' samplers in turn.
    assert [r["prompt"] for r in samples[:12]] == [r["prompt"] for r in samples[12:]]
    markdown = (run_dir / "eval.md").read_text()
    assert "| base:tiny-instruct" in markdown and "| sft-a" in markdown and "3 pairs" in markdown
    assert (run_dir / "accuracy.png").read_bytes().startswith(PNG_MAGIC)


def test_the_accuracy_plot_says_what_was_scored_and_how(arithmetic_eval, tmp_path):
    report, run_dir = arithmetic_eval
    cfg = evaluate.Config(checkpoint=["x"], num_problems=12, max_tokens=32)
    title = evaluate.plot_title(cfg, report["models"], "data/arithmetic_heldout.jsonl")
    fig = evaluate.plot_accuracy(report["models"], title, tmp_path / "a.png")
    (ax,) = fig.axes
    assert ax.get_title() == ("arithmetic: 12 held-out problems (arithmetic_heldout.jsonl)\n"
                              "sampled at temperature 0.3, max_tokens 32, seed 0\n"
                              "checkpoint: sft-a")
    assert ax.get_ylabel() == "accuracy (95% Wilson CI)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["all", "1 pair", "2 pairs", "3 pairs"]
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"base:tiny-instruct", "sft-a"}
    assert (tmp_path / "a.png").read_bytes().startswith(PNG_MAGIC)


def test_eval_is_a_wandb_run_in_the_training_runs_group(arithmetic_eval, sft_runs):
    report, run_dir = arithmetic_eval
    wandb_run = read_offline_run(run_dir)
    (run_record,) = [r["run"] for r in wandb_run.records if r["type"] == "run"]
    assert run_record["job_type"] == "eval"
    # Trained with --log_dir and no --run_name or --wandb_group: the group W&B recorded for the
    # training run, not the directory's name.
    (train_record,) = [r["run"] for r in read_offline_run(sft_runs[0]).records
                       if r["type"] == "run"]
    assert run_record["run_group"] == train_record["run_group"] != "sft-a"
    assert run_record["project"] == train_record["project"] == "tinker-experiments-local"
    base, trained = report["models"]
    # On the group's step axis: the base model at step 0, the checkpoint at its training step.
    final_step = read_jsonl(sft_runs[0] / "checkpoints.jsonl")[-1]["step"]
    points = [r for r in wandb_run.history if "evaluate/accuracy" in r]
    assert [(r["train/global_step"], r["evaluate/accuracy"]) for r in points] == [
        (0, pytest.approx(base["accuracy"])), (final_step, pytest.approx(trained["accuracy"]))]
    assert wandb_run.summary["evaluate/accuracy"] == {
        "max": pytest.approx(max(base["accuracy"], trained["accuracy"])),
        "last": pytest.approx(trained["accuracy"])}
    keys = {k for row in wandb_run.history for k in row}
    assert not [k for k in keys if "sft-a" in k or "base" in k or k.startswith("eval/")]
    results = wandb_run.incremental_table("evaluate/results")
    rows = [r for t in results for r in t.rows]
    assert [(r["model"], r["part"]) for r in rows if r["part"] == "all"] == [
        ("base:tiny-instruct", "all"), ("sft-a", "all")]
    assert {(r["model"], r["global_step"]) for r in rows} == {
        ("base:tiny-instruct", None), ("sft-a", final_step)}
    shown = [r for t in wandb_run.incremental_table("evaluate/samples") for r in t.rows]
    assert len(shown) == 2 * 12 and {r["model"] for r in shown} == {"base:tiny-instruct", "sft-a"}
    assert "samples" not in wandb_run.tables  # the training runs' key, with other columns
    assert any(row.get("evaluate/accuracy_plot._type") == "image-file"
               for row in wandb_run.history)


def test_eval_run_uses_the_training_runs_checkpoint_artifact(arithmetic_eval, sft_runs):
    """W&B lineage: the training run logged `model-<id>` (a reference to the final sampler
    weights); the eval run names the version it scored (online: `run.use_artifact`)."""
    _, run_dir = arithmetic_eval
    train_id = (sft_runs[0] / "wandb_run_id").read_text()
    final = [c for c in read_jsonl(sft_runs[0] / "checkpoints.jsonl") if c["kind"] == "sampler"][-1]
    (logged,) = [r["artifact"] for r in read_offline_run(sft_runs[0]).records
                 if r["type"] == "artifact" and r["artifact"]["type"] == "model"]
    assert logged["name"] == f"model-{train_id}"
    assert {"final", "latest", f"step-{final['step']:06d}"} <= set(logged["aliases"])
    # Offline, W&B's public API cannot declare an input: the summary names the version read
    # (docs/wandb.md: lineage), and the eval run logs no artifact of the training run's.
    eval_run = read_offline_run(run_dir)
    assert eval_run.summary["evaluate/inputs"] == [f"{logged['name']}:step-{final['step']:06d}"]
    assert not [r for r in eval_run.records if r["type"] == "artifact"
                and r["artifact"]["type"] == "model"]


def test_compare_reports_finals_bests_and_config_differences(sft_runs, tmp_path):
    report = compare.main(compare.Config(runs=[str(d) for d in sft_runs],
                                         out_dir=tmp_path / "cmp"))
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| lr " in text and "0.002" in text and "0.001" in text
    assert "log_dir" not in text and "| seed" not in text  # only keys that differ
    # The default keys that exist in either run; sft-a logged no eval/loss.
    assert list(report["values"]["sft-a"]) == ["train/loss", "eval/loss"]
    assert math.isnan(report["values"]["sft-a"]["eval/loss"]["final"])
    losses = [m["train/loss"] for m in read_jsonl(sft_runs[1] / "metrics.jsonl")]
    assert report["values"]["sft-b"]["train/loss"] == {"final": losses[-1], "best": min(losses)}
    assert (tmp_path / "cmp" / "compare.png").read_bytes().startswith(PNG_MAGIC)


def test_chat_eval_gives_a_finite_nll(sft_runs, tmp_path):
    final = [c for c in read_jsonl(sft_runs[0] / "checkpoints.jsonl")
             if c["kind"] == "sampler"][-1]["path"]
    report = evaluate.main(evaluate.Config(
        backend="local", task="chat", dataset="foo", checkpoint=[final], num_problems=4,
        max_tokens=8, wandb_mode="disabled", log_dir=tmp_path / "chat"))
    run_id = final.removeprefix("tinker://").split("/")[0]
    assert [m["label"] for m in report["models"]] == ["base:tiny-instruct", f"{run_id}/final"]
    for model in report["models"]:
        assert math.isfinite(model["nll"]) and model["nll"] > 0
        assert model["n"] == 4 and 0.0 <= model["exact_match"] <= 1.0
    assert "nll/token" in (tmp_path / "chat" / "eval.md").read_text()


def test_flags_it_does_not_use_are_gone():
    for flag in ("--compare", "--compare_keys", "--lr", "--lora_rank", "--sample_every"):
        with pytest.raises(ConfigError, match=f"unrecognized arguments: {flag}"):
            parse_config(evaluate.Config, [flag, "x"])


def test_list_flags_parse():
    cfg = parse_config(evaluate.Config, ["--checkpoint", "runs/a", "local://r/sampler_weights/x",
                                         "--nobase_model", "--num_problems", "5"])
    assert cfg.checkpoint == ["runs/a", "local://r/sampler_weights/x"]
    assert cfg.base_model is False and cfg.num_problems == 5


@pytest.mark.parametrize("overrides, error, message", [
    ({"checkpoint": ["tinker://nope/sampler_weights/final"]}, ConfigError,
     "--checkpoint tinker://nope/sampler_weights/final: checkpoint .* not found on this server"),
    ({"checkpoint": ["local://abc/sampler_weights/final"]}, ConfigError,
     "--checkpoint local://abc/sampler_weights/final: model_path must start with 'tinker://'"),
    ({"checkpoint": ["no/such/run"]}, FileNotFoundError, "--checkpoint no/such/run: neither"),
    ({"checkpoint": ["EMPTY"]}, FileNotFoundError, "no checkpoints.jsonl in .*empty"),
    ({"base_model": False}, ConfigError, "--base_model: nothing to score"),
    ({"num_problems": 0}, ConfigError, "--num_problems: must be >= 1"),
    ({"heldout": "missing.jsonl"}, DatasetError, "--heldout missing.jsonl: no such file"),
])
def test_bad_inputs_fail_clearly_before_any_run_starts(tmp_path, overrides, error, message):
    (tmp_path / "empty").mkdir()
    overrides = {k: [str(tmp_path / "empty") if v == "EMPTY" else v for v in vs]
                 if isinstance(vs, list) else vs for k, vs in overrides.items()}
    cfg = evaluate.Config(backend="local", wandb_mode="offline", log_dir=tmp_path / "eval",
                          **overrides)
    with pytest.raises(error, match=message):
        evaluate.main(cfg)
    assert not (tmp_path / "eval").exists()


def test_a_wandb_artifact_names_a_checkpoint_online(monkeypatch):
    """`--checkpoint entity/project/model-<id>:alias` (W&B's Api is faked: no server here)."""
    import types

    import wandb

    name = "team/tinker-experiments/model-abc12345:final"
    with pytest.raises(ConfigError, match="needs W&B online"):
        evaluate.checkpoint_target(name, None, "tiny-chat", "offline")

    class Artifact:
        name, project, entity = "model-abc12345:v3", "tinker-experiments", "team"
        metadata = {"base_model": "Qwen/Qwen3-4B-Instruct-2507", "lora_rank": 32}
        manifest = types.SimpleNamespace(
            entries={"weights": types.SimpleNamespace(ref="tinker://abc/sampler_weights/final")})

        def logged_by(self):
            return types.SimpleNamespace(group="rlvr-seed")

    asked = []
    monkeypatch.setattr(wandb, "Api", lambda: types.SimpleNamespace(
        artifact=lambda n, type=None: asked.append((n, type)) or Artifact()))
    target = evaluate.checkpoint_target(name, None, "tiny-chat", "online")
    assert asked == [(name, "model")]
    assert (target.label, target.base_model, target.path, target.group, target.project) == (
        "model-abc12345:v3", "Qwen/Qwen3-4B-Instruct-2507", "tinker://abc/sampler_weights/final",
        "rlvr-seed", "tinker-experiments")
    used = []
    evaluate.declare_inputs(types.SimpleNamespace(use_artifact=used.append), [target])
    assert used == [name]  # run.use_artifact(name): the lineage edge to that version
