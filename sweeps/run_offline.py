"""Run a W&B sweep YAML on this machine without a W&B server; W&B's own engine picks the runs.

    python sweeps/run_offline.py sweeps/sft_lr.yaml --parallel 2     # the whole grid, 2 at a time
    python sweeps/run_offline.py sweeps/rl_lr.yaml --count 6 --parallel 2 --group rl-lr-try1
    python sweeps/run_offline.py SWEEP.yaml [--count N] [--parallel K] [--group NAME] [--out DIR]
                                            [--project P] [--wandb_mode offline|online|...]

`wandb agent` asks the W&B server for each run's parameters; this asks the same engine directly
(the open-source `sweeps` package: `next_run` for grid / random / bayes, `stop_runs` for
`early_terminate: hyperband`), feeding it each run's metrics.jsonl as its history. A run is the
YAML's `command` with the agent's macros expanded (`${env}`, `${interpreter}` = this Python,
`${program}` relative to the repo root, `${args}` = `--name=value`), plus `--wandb_mode`,
`--wandb_group` (one group for the whole sweep), `--log_dir <out>/<run>`, `--run_name <run>` and,
with --project, `--wandb_project`, and with --base_url, `--base_url` (runs on the local backend
then share one `python -m local_tinker serve` instead of starting a server each). The YAML's
`project` is where `wandb sweep` creates the sweep; here the scripts' default applies unless
--project says otherwise (so a local sweep's runs go to tinker-experiments-local, not among real
Tinker runs).
Runs start in the repo root; each one's output goes to `<out>/<run>/stdout.log`.

It stops after --count runs, or when a grid is exhausted. Failed runs are listed as failed and
the sweep goes on; runs that hyperband stopped are listed as stopped. Runs are stopped the way
`wandb agent` stops them: SIGTERM (the scripts finish the step, save a checkpoint and end their
W&B run with exit code 143), SIGKILL after a grace period. The leaderboard ranks finished and
stopped runs by the metric's best value (min or max by the goal): what the scripts' W&B summary
shows for the metric (define_metric), and what bayes and hyperband themselves compare; a tie is
broken by the metric's last value (the summary's other half), then by start order. `final` is
the last logged value. An accuracy over N held-out problems (eval/accuracy: N = the run's
eval_problems) gets its Wilson 95% interval, and the runs whose interval overlaps the best run's
are marked `~1`: within noise of the best, which that eval cannot tell apart from it. The
leaderboard is printed and written to `<out>/leaderboard.md` and `<out>/leaderboard.json`, also
after Ctrl-C (which stops the running runs, as above; a second Ctrl-C kills them). The exit
status is 1 when no run finished. Secrets (a password in --base_url, an API key's value in
--group) are masked in everything the runner prints or writes; the runs get them as given.
Offline W&B runs upload later with `wandb sync <out>/*/wandb/offline-run-*` (as grouped runs;
W&B only attaches runs to a sweep when a server-side sweep started them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

warnings.filterwarnings("ignore", message="Valid config keys have changed in V2")
from sweeps import (  # noqa: E402  (W&B's sweep engine, not this folder: it has no __init__)
    RunState,
    SweepConfig,
    SweepRun,
    next_run,
    schema_violations_from_proposed_config,
    stop_runs,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # after site-packages: `sweeps` stays W&B's engine, not this folder
from common.cli import print_error  # noqa: E402
from common.evaluation import wilson_interval  # noqa: E402
from common.runfiles import json_safe, read_run_config  # noqa: E402
from common.secrets import redact, redact_name  # noqa: E402

# Accuracies the leaderboard gives an interval: metric -> the run config field that says over
# how many held-out problems it was measured.
ACCURACY_PROBLEMS = {"eval/accuracy": "eval_problems"}
RUNNER_FLAGS = ("wandb_mode", "wandb_group", "log_dir", "run_name")
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
MACROS = ("env", "interpreter", "program", "args", "args_no_hyphens", "args_no_equals",
          "args_json")
STOP_GRACE_S = 60.0  # after SIGTERM the scripts finish the step (a Tinker step can be slow),
#                      save a checkpoint and close their W&B run; then SIGKILL


@dataclass
class Trial:
    """One run of the sweep: the engine's view (`run`) plus the process behind it."""

    run: SweepRun
    params: dict[str, Any]
    log_dir: Path
    proc: subprocess.Popen[bytes]
    started: float
    seconds: float = 0.0
    exit_code: int | None = None
    stop_sent: float | None = None


class SweepError(ValueError):
    """A sweep that cannot run as given (a flag, the YAML); the message names it."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, not usage + error, and the same exit code
        raise SweepError(message)


def load_sweep(path: Path) -> SweepConfig:
    """The sweep config, validated by the engine's schema; errors name the file."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SweepError(f"{path}: cannot read the sweep YAML "
                         f"({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: expected a mapping (a W&B sweep config)")
    try:
        problems = schema_violations_from_proposed_config(raw)
    except ValueError as exc:
        problems = [str(exc)]
    taken = sorted(set(raw.get("parameters") or {}) & set(RUNNER_FLAGS))
    if taken:
        problems.append(f"parameters {taken} are set by the runner for every run")
    command = [str(c) for c in raw.get("command") or DEFAULT_COMMAND]
    unknown = [c for c in command if c.startswith("${") and c[2:-1] not in MACROS]
    if unknown:
        problems.append(f"command macros {unknown} are not supported here; known: {MACROS}")
    if "${program}" in command and not (ROOT / str(raw.get("program", ""))).is_file():
        problems.append(f"program {raw.get('program')!r} is not a file under {ROOT}")
    if problems:
        raise SweepError(f"{path}: not a valid sweep config: " + "; ".join(problems))
    return SweepConfig(raw)


def expand_command(command: list[str], program: str, params: dict[str, Any]) -> list[str]:
    """The agent's macro expansion (wandb_agent.py), except `${interpreter}` is this Python."""
    flags = [f"--{k}={v}" for k, v in params.items()]
    values = {
        "env": ["/usr/bin/env"] if os.name == "posix" else [],
        "interpreter": [sys.executable],
        "program": [str(ROOT / program)],
        "args": flags,
        "args_no_hyphens": [f[2:] for f in flags],
        "args_no_equals": [part for k, v in params.items() for part in (f"--{k}", str(v))],
        "args_json": [json.dumps(params)],
    }
    out: list[str] = []
    for item in map(str, command):
        out += values[item[2:-1]] if item.startswith("${") and item.endswith("}") else [item]
    return out


def read_run(log_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """History (metrics.jsonl rows) and summary (last value per key, then summary.json)."""
    history: list[dict[str, Any]] = []
    path = log_dir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                history.append(json.loads(line))
            except json.JSONDecodeError:  # a line still being written
                continue
    summary: dict[str, Any] = {}
    for row in history:
        summary.update(row)
    try:
        summary.update(json.loads((log_dir / "summary.json").read_text()))
    except (OSError, ValueError):
        pass
    return history, summary


def swept_names(config: SweepConfig) -> list[str]:
    """Parameters that vary between runs (the rest are fixed `value:`s)."""
    return [k for k, s in config["parameters"].items() if s.get("distribution") != "constant"]


def state_of(run: SweepRun) -> str:
    """finished, failed, running, or stopped (what the engine calls killed)."""
    state = RunState(run.state).value  # pydantic keeps the enum or its value, depending on path
    return "stopped" if state == "killed" else state


def start(config: SweepConfig, suggestion: SweepRun, index: int, args: argparse.Namespace,
          swept: list[str]) -> Trial:
    params = {k: v["value"] for k, v in suggestion.config.items()}
    params = {k: v.item() if hasattr(v, "item") else v for k, v in params.items()}  # numpy
    parts = [f"{k}{v:.3g}" if isinstance(v, float) else f"{k}{v}"
             for k, v in params.items() if k in swept]
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", "-".join([args.sweep.stem, f"{index:02d}", *parts]))
    log_dir = args.out / name[:100]
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = expand_command(config.get("command") or DEFAULT_COMMAND, config.get("program", ""),
                         params)
    cmd += [f"--wandb_mode={args.wandb_mode}", f"--wandb_group={args.group}",
            f"--log_dir={log_dir}", f"--run_name={log_dir.name}"]
    if args.project:
        cmd.append(f"--wandb_project={args.project}")
    if args.base_url:  # every run on one server: a `python -m local_tinker serve`, say
        cmd.append(f"--base_url={args.base_url}")
    print(redact(f"[sweep] start {log_dir.name}: {shlex.join(cmd)}"), flush=True)
    with (log_dir / "stdout.log").open("w") as log:  # the child keeps its own descriptor
        log.write(redact(f"$ {shlex.join(cmd)}\n"))
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # Ctrl-C reaches the runner only
    run = SweepRun(name=log_dir.name, config=suggestion.config, state=RunState.running,
                   search_info=suggestion.search_info)
    return Trial(run, params, log_dir, proc, started=time.time())


def stop(trial: Trial) -> None:
    """SIGTERM first, as `wandb agent` stops a run (the run saves and closes its tracker as
    stopped), SIGKILL after STOP_GRACE_S."""
    if trial.stop_sent is None:
        trial.stop_sent = time.time()
        trial.proc.send_signal(signal.SIGTERM)
    elif time.time() - trial.stop_sent > STOP_GRACE_S:
        kill(trial)


def kill(trial: Trial) -> None:
    with contextlib.suppress(ProcessLookupError):  # it may have exited just now
        os.killpg(trial.proc.pid, signal.SIGKILL)  # its whole session (W&B's service too)


def update(trials: list[Trial], config: SweepConfig, hyperband: bool) -> None:
    """Reap finished runs; with hyperband, read running runs too and stop the ones it says."""
    for trial in (t for t in trials if t.exit_code is None):
        code = trial.proc.poll()
        if code is None and not hyperband and trial.stop_sent is None:
            continue
        trial.run.history, trial.run.summary_metrics = read_run(trial.log_dir)
        if code is None:
            if trial.stop_sent is not None:
                stop(trial)
            continue
        trial.exit_code, trial.seconds = code, time.time() - trial.started
        trial.run.state = (RunState.killed if trial.stop_sent is not None
                           else RunState.finished if code == 0 else RunState.failed)
        print(f"[sweep] {state_of(trial.run)} {trial.run.name} (exit {code}, "
              f"{trial.seconds:.0f}s)", flush=True)
    if hyperband:
        by_name = {t.run.name: t for t in trials}
        for run in stop_runs(config, [t.run for t in trials]):
            if by_name[run.name].stop_sent is None:
                print(f"[sweep] hyperband stops {run.name}", flush=True)
                stop(by_name[run.name])


def run_sweep(config: SweepConfig, args: argparse.Namespace, trials: list[Trial]) -> None:
    """Start runs as the engine suggests them, up to --parallel at once, until done."""
    hyperband = (config.get("early_terminate") or {}).get("type") == "hyperband"
    swept = swept_names(config)
    exhausted = False
    try:
        while True:
            update(trials, config, hyperband)
            active = [t for t in trials if t.exit_code is None]
            while not exhausted and len(active) < args.parallel and (
                    args.count is None or len(trials) < args.count):
                suggestion = next_run(config, [t.run for t in trials], validate=True)
                if suggestion is None:  # the grid is done
                    exhausted = True
                    break
                trials.append(start(config, suggestion, len(trials) + 1, args, swept))
                active.append(trials[-1])
            if not active:
                return
            time.sleep(args.poll)
    finally:  # Ctrl-C or an error: no training process outlives the runner
        alive = [t for t in trials if t.proc.poll() is None]
        if alive:
            print(f"[sweep] stopping {len(alive)} runs (Ctrl-C again kills them)", flush=True)
        for trial in alive:
            stop(trial)
        try:
            deadline = time.time() + STOP_GRACE_S
            for trial in alive:
                trial.proc.wait(max(0.0, deadline - time.time()))
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            for trial in (t for t in alive if t.proc.poll() is None):
                kill(trial)
                trial.proc.wait()
        update(trials, config, hyperband=False)


def leaderboard(trials: list[Trial], metric: dict[str, str] | None) -> list[dict[str, Any]]:
    """Finished and stopped runs ranked by the metric's best value, ties by its last value, then
    by start order; the rest follow, unranked. Accuracies carry their interval and a mark on
    the runs within noise of the best (see the module docstring)."""
    name, goal = (metric or {}).get("name"), (metric or {}).get("goal", "minimize")
    rows = []
    for t in trials:
        final = t.run.summary_metrics.get(name) if name else None
        final = float(final) if isinstance(final, int | float) and math.isfinite(final) else None
        try:
            best = float(t.run.metric_extremum(name, "max" if goal == "maximize" else "min"))
        except (ValueError, TypeError):  # no metric set, or no finite value logged
            best = None
        state = state_of(t.run)
        rows.append({"rank": None, "name": t.run.name, "state": state, "exit_code": t.exit_code,
                     "params": t.params, "metric": best, "final": final,
                     "interval": accuracy_interval(name, best, t.log_dir), "within_noise": None,
                     "seconds": round(t.seconds, 1), "log_dir": str(t.log_dir)})
    sign = -1 if goal == "maximize" else 1
    ranked = sorted((r for r in rows if r["state"] in ("finished", "stopped")
                     and r["metric"] is not None),
                    key=lambda r: (sign * r["metric"],
                                   math.inf if r["final"] is None else sign * r["final"]))
    for rank, row in enumerate(ranked, start=1):
        row["rank"] = rank
    if ranked and ranked[0]["interval"]:
        low, high = ranked[0]["interval"]
        for row in ranked:
            row["within_noise"] = bool(row["interval"] and row["interval"][0] <= high
                                       and row["interval"][1] >= low)
    return ranked + [r for r in rows if r["rank"] is None]


def accuracy_interval(metric: str | None, value: float | None, log_dir: Path
                      ) -> list[float] | None:
    """The Wilson 95% interval of an accuracy measured over the run's N held-out problems
    (None for other metrics, or when N is unknown)."""
    field = ACCURACY_PROBLEMS.get(metric or "")
    try:
        problems = read_run_config(log_dir).get(field) if field else None
    except ValueError:  # a damaged config.yaml: no interval, the rest of the board stands
        problems = None
    if value is None or not isinstance(problems, int) or problems < 1 or not 0 <= value <= 1:
        return None
    return list(wilson_interval(round(value * problems), problems))


def markdown(rows: list[dict[str, Any]], config: SweepConfig, args: argparse.Namespace) -> str:
    metric = config.get("metric") or {"name": "-", "goal": "-"}
    swept = swept_names(config)
    best = {"maximize": "max", "minimize": "min"}.get(metric["goal"], "best")
    noise = any(r["interval"] for r in rows)
    lines = [redact(f"Sweep {args.sweep} ({config['method']}), W&B group `{args.group}`: ranked "
                    f"by the best {metric['name']} ({best}, as in the runs' W&B summary), ties by "
                    "the last; final = the last logged value; stopped runs rank with what they "
                    "reached." + (" 95% CI: Wilson interval over the run's held-out problems; "
                                  "~1: the interval overlaps the best run's (within noise)."
                                  if noise else "")), "",
             f"| rank | run | state | {', '.join(swept)} | {metric['name']} ({best}) | "
             + ("95% CI | ~1 | " if noise else "") + "final | time |",
             "| --- | --- | --- | --- | --- | " + ("--- | --- | " if noise else "")
             + "--- | --- |"]
    for r in rows:
        params = ", ".join(f"{r['params'][k]:.4g}" if isinstance(r["params"][k], float)
                           else str(r["params"][k]) for k in swept)
        state = r["state"] if r["state"] != "failed" else f"failed (exit {r['exit_code']})"
        interval = (f"[{r['interval'][0]:.3f}, {r['interval'][1]:.3f}] | "
                    f"{'~1' if r['within_noise'] else ''} | ") if noise else ""
        if noise and not r["interval"]:
            interval = "- |  | "
        lines.append(f"| {r['rank'] or '-'} | {r['name']} | {state} | {params} | "
                     f"{_num(r['metric'])} | {interval}{_num(r['final'])} | {r['seconds']:.0f}s |")
    return "\n".join(lines) + "\n"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def main(argv: list[str] | None = None) -> int:
    """The runner's one error path, as the scripts': a bad flag or YAML is one `error:` line
    and exit code 2."""
    try:
        return sweep(argv)
    except SweepError as exc:
        print_error(exc)
        return 2


def sweep(argv: list[str] | None = None) -> int:
    parser = _Parser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("sweep", type=Path, help="W&B sweep YAML (e.g. sweeps/sft_lr.yaml)")
    parser.add_argument("--count", type=int, help="runs to start (default: the whole grid; "
                        "required for random and bayes, which never run out)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once")
    parser.add_argument("--group", help="W&B group of every run (default: <yaml>-<time>)")
    parser.add_argument("--out", type=Path, help="sweep directory (default: runs/sweeps/<group>)")
    parser.add_argument("--project", help="W&B project of every run (default: the scripts' "
                        "default: tinker-experiments, or tinker-experiments-local on the local "
                        "backend)")
    parser.add_argument("--base_url", help="pass --base_url to every run: with the local "
                        "backend, one `python -m local_tinker serve` that all runs share")
    parser.add_argument("--wandb_mode", default="offline",
                        choices=["offline", "online", "auto", "disabled"])
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between checks")
    args = parser.parse_args(argv)
    config = load_sweep(args.sweep)
    if args.count is None and config["method"] != "grid":
        parser.error(f"--count is required for method {config['method']}")
    if args.parallel < 1 or (args.count is not None and args.count < 1):
        parser.error("--parallel and --count must be >= 1")
    args.group = args.group or f"{args.sweep.stem}-{datetime.now():%Y%m%d-%H%M%S}"
    args.out = (args.out or Path("runs") / "sweeps" / redact_name(args.group)).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.yaml").write_text(redact(yaml.safe_dump(dict(config), sort_keys=False)))

    trials: list[Trial] = []
    # SIGTERM (a scheduler, `docker stop`) ends the sweep the way Ctrl-C does: runs stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    # SIGINT set here too: a process started with `&` from a script inherits SIGINT ignored, and
    # Python then keeps ignoring it, so Ctrl-C (or a test's SIGINT) would leave the sweep running.
    signal.signal(signal.SIGINT, _interrupt)
    try:
        run_sweep(config, args, trials)
    except KeyboardInterrupt:
        print("[sweep] interrupted: the leaderboard covers the runs so far", flush=True)
    rows = leaderboard(trials, config.get("metric"))
    table = markdown(rows, config, args)
    print("\n" + table, end="")
    (args.out / "leaderboard.md").write_text(redact(f"# Leaderboard: {args.group}\n\n{table}"))
    (args.out / "leaderboard.json").write_text(json.dumps(redact(json_safe(
        {"sweep": str(args.sweep), "group": args.group, "method": config["method"],
         "metric": config.get("metric"), "ranked_by": "best (min or max by goal) metric value, "
         "ties by the last value, then start order", "runs": rows})), indent=2) + "\n")
    print(f"[sweep] {len(trials)} runs in {args.out} (leaderboard.md, leaderboard.json)")
    return 0 if any(r["state"] == "finished" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
