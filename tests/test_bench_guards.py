"""bench/guards.py: the checks every benchmark runs before it prints a comparison."""

import math
import os
import threading

import pytest

from bench.guards import Spread, alternate, on_worker, overhead, speed_ratio


def test_the_minus_220_ms_overhead_is_refused():
    # What bench/http_overhead.py once printed: forward_backward 102.8 ms over HTTP against
    # 322.9 ms direct. An overhead cannot be negative; the sides measured different work.
    verdict = overhead([0.1028, 0.1010, 0.1050], [0.3229, 0.3100, 0.3300])
    assert verdict.refused
    assert verdict.text.startswith("refused: negative overhead -220.1 ms")


def test_an_overhead_within_the_noise_is_refused():
    verdict = overhead([0.050, 0.047, 0.052, 0.046], [0.048, 0.050, 0.049, 0.047])
    assert verdict.refused and "within the noise" in verdict.text and "spans zero" in verdict.text


def test_a_clear_overhead_is_printed_with_its_spread():
    verdict = overhead([0.0035, 0.0042, 0.0038, 0.0040], [0.0006, 0.0007, 0.0005, 0.0006])
    assert not verdict.refused
    assert verdict.value == pytest.approx(0.00335)  # median of 2.9, 3.5, 3.3, 3.4 ms
    assert verdict.text == "3.4 ms (IQR 3.2..3.4)"


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_a_timing_that_is_not_a_positive_number_is_refused(bad):
    assert overhead([0.01, bad], [0.005, 0.005]).refused
    assert speed_ratio([0.01, bad], [0.02, 0.02], 10, 10).refused


def test_unpaired_rounds_are_refused():
    assert "different numbers of rounds" in overhead([0.01, 0.02], [0.01]).text


@pytest.mark.parametrize(("ours_work", "theirs_work", "side"), [(0, 10, "ours"),
                                                                (10, 0, "theirs")])
def test_a_side_that_did_no_work_is_refused(ours_work, theirs_work, side):
    verdict = speed_ratio([0.01, 0.01], [0.02, 0.02], ours_work, theirs_work)
    assert verdict.refused and verdict.text == f"refused: {side} did no work"


def test_a_ratio_lost_in_the_noise_is_refused_and_a_clear_one_printed():
    noisy = speed_ratio([1.0, 1.0, 1.0, 1.0], [0.8, 1.25, 0.9, 1.1], 1, 1)
    assert noisy.refused and "no difference beyond the noise" in noisy.text
    clear = speed_ratio([1.0, 1.0, 1.0], [2.0, 2.2, 1.9], 1, 1)
    assert clear.value == pytest.approx(2.0)
    assert clear.text == "2.00x (IQR 1.95..2.10x, 3 rounds)"
    slower = speed_ratio([2.0, 2.0, 2.0], [1.0, 1.1, 0.9], 1, 1)
    assert slower.value == pytest.approx(0.5)  # ours slower: a ratio below 1, still printed


def test_sides_warm_up_then_alternate_in_rotating_order():
    calls = []
    sides = {name: (lambda name=name: calls.append(name) or len(calls)) for name in "abc"}
    results = alternate(sides, repeats=3, warmup=1)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert results == {"a": [4, 9, 11], "b": [5, 7, 12], "c": [6, 8, 10]}


def test_spread_of_one_value_and_of_several():
    assert Spread.of([3.0]) == Spread(3.0, 3.0, 3.0, 1)
    spread = Spread.of([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (spread.median, spread.low, spread.high, spread.n) == (3.0, 2.0, 4.0, 5)


def test_a_baseline_runs_on_the_servers_worker_thread_and_its_errors_reach_the_caller(
        local_server):
    # Baselines compute where the engine does: on another thread, torch's small operations
    # ran several times slower once the worker's had run (docs/benchmarks.md).
    _, server = local_server
    assert on_worker(server, "baseline", lambda: threading.current_thread().name) \
        == "local-tinker-worker"

    def fails() -> None:
        raise ValueError("the baseline broke")

    with pytest.raises(ValueError, match="the baseline broke"):
        on_worker(server, "baseline", fails)


def test_peers_turns_pause_every_n_steps_and_stop_when_the_parent_goes(monkeypatch):
    # bench/peers.py --interleave: a side tells the parent at the start of steps 1, 4, 7, ...
    # and runs on only when the parent says go.
    from bench.peers import Turns

    go_read, go_write = os.pipe()
    done_read, done_write = os.pipe()
    monkeypatch.setenv("PEERS_TURNS", f"{go_read},{done_write},3")
    os.set_blocking(go_read, False)  # a wait the parent did not grant fails instead of hanging
    turns = Turns()
    os.write(go_write, b"gg")  # two turns granted ahead
    for _ in range(6):
        turns.step()
    assert os.read(done_read, 100) == b".."  # paused before steps 1 and 4, not in between
    os.close(go_write)
    with pytest.raises(SystemExit, match="the parent went away"):
        turns.step()  # step 7's turn: the parent is gone, so the side stops
    assert os.read(done_read, 100) == b"."


def test_peers_turns_never_wait_outside_interleave(monkeypatch):
    from bench.peers import Turns

    monkeypatch.delenv("PEERS_TURNS", raising=False)
    turns = Turns()
    for _ in range(50):
        turns.step()  # would block on fd 0 (or fail) if it waited
    assert turns.steps == 50


def test_peers_turns_measure_the_cpu_a_side_uses_while_paused(monkeypatch):
    # A side whose threads keep working while the other side has its turn would slow that turn;
    # the parent refuses the comparison when a side's paused CPU passes PAUSED_CPU_LIMIT.
    from bench.peers import PAUSED_CPU_LIMIT, Turns, paused_cpu_share

    def pause(spin: bool) -> float:
        go_read, go_write = os.pipe()
        done_read, done_write = os.pipe()
        monkeypatch.setenv("PEERS_TURNS", f"{go_read},{done_write},1")
        turns = Turns()
        stop = threading.Event()

        def busy() -> None:
            while not stop.is_set():
                sum(range(1000))

        def grant() -> None:
            os.read(done_read, 1)  # the side is paused: let it wait a while, then go
            stop.wait(0.5)
            os.write(go_write, b"g")

        threads = [threading.Thread(target=grant)] + ([threading.Thread(target=busy)] if spin
                                                      else [])
        for thread in threads:
            thread.start()
        turns.step()
        stop.set()
        for thread in threads:
            thread.join()
        return paused_cpu_share(turns.record())

    assert pause(spin=True) > PAUSED_CPU_LIMIT
    assert pause(spin=False) < PAUSED_CPU_LIMIT
