"""The local backend's torch thread count: the rule for given (cores, load), the overrides, and
that the count really reaches the thread that computes. Not timed."""

import threading

import pytest
import torch

from local_tinker import threads
from local_tinker.threads import CpuSample, InvalidThreads, ThreadPolicy, choose_threads


@pytest.mark.parametrize(("cores", "others_busy", "expected"), [
    (2, 0.0, 2),    # idle: every core (2 threads were ~9% faster than 1 on an idle 2-core box)
    (2, 0.2, 2),    # background noise does not cost the second thread
    (2, 0.3, 1),    # a core partly taken: one thread (2 threads collapsed 7-9x under load)
    (2, 1.0, 1),
    (2, 4.2, 1),    # load 4-7 on 2 cores: never more than one
    (1, 0.0, 1),
    (8, 2.0, 6),
    (8, 2.9, 5),
    (8, 20.0, 1),
    (4, -0.5, 4),   # a negative measurement (counter rounding) is no load, not extra cores
])
def test_one_thread_per_core_that_other_processes_leave_free(cores, others_busy, expected):
    assert choose_threads(cores, others_busy) == expected


def test_others_busy_is_busy_time_less_our_own_over_the_window():
    before = CpuSample(at=10.0, busy_s=100.0, own_s=5.0)
    after = CpuSample(at=12.0, busy_s=103.0, own_s=6.0)  # 3 busy core-s in 2 s, 1 of them ours
    assert threads.others_busy(before, after) == pytest.approx(1.0)
    assert threads.others_busy(before, before) == 0.0
    ours_only = CpuSample(at=12.0, busy_s=101.0, own_s=6.2)  # counters tick at different rates
    assert threads.others_busy(before, ours_only) == 0.0


def test_explicit_choices_win_in_order():
    env = {"LOCAL_TINKER_THREADS": "3", "OMP_NUM_THREADS": "4"}
    assert threads.explicit_threads(2, env) == (2, "--threads 2")
    assert threads.explicit_threads(None, env) == (3, "LOCAL_TINKER_THREADS=3")
    assert threads.explicit_threads(None, {"OMP_NUM_THREADS": "4"}) == (
        None, "OMP_NUM_THREADS=4")  # torch already follows it
    assert threads.explicit_threads(None, {"OMP_NUM_THREADS": " "}) is None
    assert threads.explicit_threads(None, {}) is None


@pytest.mark.parametrize(("argument", "env", "message"), [
    (0, {}, "--threads must be a whole number >= 1, got 0"),
    (None, {"LOCAL_TINKER_THREADS": "two"},
     "LOCAL_TINKER_THREADS must be a whole number >= 1, got 'two'"),
    (None, {"LOCAL_TINKER_THREADS": "0"},
     "LOCAL_TINKER_THREADS must be a whole number >= 1, got '0'"),
])
def test_an_invalid_explicit_count_is_a_clear_error(argument, env, message):
    with pytest.raises(InvalidThreads) as raised:
        ThreadPolicy(argument, env=env)
    assert str(raised.value) == message


class FakeCpu:
    """CpuSamples for a scripted load: `others` busy cores from now on, time moved by hand."""

    def __init__(self) -> None:
        self.at, self.busy_s, self.others = 0.0, 0.0, 0.0

    def advance(self, seconds: float) -> None:
        self.at += seconds
        self.busy_s += self.others * seconds

    def sample(self) -> CpuSample:
        return CpuSample(self.at, self.busy_s, own_s=0.0)


def applied_on_a_fresh_thread(policy: ThreadPolicy) -> int:
    """apply() where the worker would run it; torch's count as that thread then sees it."""
    seen = []
    worker = threading.Thread(target=lambda: (policy.apply(), seen.append(
        torch.get_num_threads())))
    worker.start()
    worker.join()
    return seen[0]


@pytest.fixture
def restore_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # the policy's threads set the process default too


def test_the_policy_follows_the_load_and_says_so(monkeypatch, restore_torch_threads):
    cpu, lines = FakeCpu(), []
    monkeypatch.setattr(threads.time, "sleep", cpu.advance)  # the first window "passes"
    monkeypatch.setattr(threads.time, "monotonic", lambda: cpu.at)
    cpu.others = 1.4
    policy = ThreadPolicy(None, env={}, sample=cpu.sample, cores=lambda: 2,
                          announce=lines.append)
    assert applied_on_a_fresh_thread(policy) == 1
    assert lines == ["local backend: 1 torch thread (2 cores, 1.4 of them busy with other "
                     "processes; --threads N or OMP_NUM_THREADS overrides)"]
    cpu.others = 0.0  # the other jobs ended
    cpu.advance(threads.RECHECK_S / 2)
    policy.apply()
    assert policy.threads == 1 and len(lines) == 1  # not yet due
    cpu.advance(threads.RECHECK_S / 2)
    assert applied_on_a_fresh_thread(policy) == 2
    assert lines[-1].startswith("local backend: now 2 torch threads (2 cores, 0.0 of them busy")


def test_an_explicit_count_is_applied_and_never_rechecked(monkeypatch, restore_torch_threads):
    cpu, lines = FakeCpu(), []
    monkeypatch.setattr(threads.time, "monotonic", lambda: cpu.at)
    policy = ThreadPolicy(2, env={"OMP_NUM_THREADS": "1"}, sample=cpu.sample,
                          cores=lambda: 2, announce=lines.append)
    assert applied_on_a_fresh_thread(policy) == 2
    cpu.others = 5.0
    cpu.advance(10 * threads.RECHECK_S)
    assert applied_on_a_fresh_thread(policy) == 2
    assert lines == ["local backend: 2 torch threads (--threads 2)"]


def test_omp_num_threads_is_left_to_torch(restore_torch_threads):
    lines = []
    policy = ThreadPolicy(None, env={"OMP_NUM_THREADS": "1"}, announce=lines.append)
    applied_on_a_fresh_thread(policy)
    assert lines == [f"local backend: {policy.threads} torch thread"
                     f"{'s' if policy.threads != 1 else ''} (OMP_NUM_THREADS=1)"]


def test_no_cpu_counters_keeps_torchs_default(restore_torch_threads):
    lines = []
    policy = ThreadPolicy(None, env={}, sample=lambda: None, cores=lambda: 2,
                          announce=lines.append)
    applied_on_a_fresh_thread(policy)
    assert "load not measurable" in lines[0]


def test_real_counters_measure_a_plausible_load():
    first = threads.read_sample()
    assert first is not None  # Linux: /proc/stat
    second = None
    while second is None or second.at - first.at < 0.2:
        second = threads.read_sample()
    assert 0.0 <= threads.others_busy(first, second) <= threads.usable_cores() + 0.5
