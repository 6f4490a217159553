"""The local server's walls, tried from outside with the real SDK and raw HTTP (issue 23).

Nothing outside --root is read or deleted (absolute paths, `..`, `%2E%2E`, a symlink out); one
API key cannot list, load, delete, train or poll another's objects; a client waiting across a
restart gets an error, never another request's result; settings, payloads and parameters that
cannot work are refused with their reason.
"""

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tinker
from tinker import types
from tinker.proto import tinker_public_pb2 as pb

import local_tinker
from local_tinker.__main__ import main as serve_main

ROOT = Path(__file__).resolve().parent.parent
HANG_CAP_S = 600  # only a hang reaches it
KEY_A = "tml-walls-owner-a-0123456789"
KEY_B = "tml-walls-owner-b-9876543210"
OPERATOR_KEY = "tml-walls-operator-secret-42"
LOCAL = {"X-API-Key": local_tinker.LOCAL_API_KEY}


def refused(call) -> str:
    """The error text of a call the server must refuse with a 4xx (or a failed future)."""
    with pytest.raises((tinker.APIStatusError, tinker.RequestFailedError, ValueError)) as caught:
        result = call()
        if hasattr(result, "result"):
            result.result()
    error = caught.value
    if isinstance(error, tinker.APIStatusError):
        assert 400 <= error.status_code < 500, error
    return str(error)


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def datum(tokens: list[int]) -> types.Datum:
    return types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]),
                       loss_fn_inputs={"target_tokens": tokens[1:],
                                       "weights": [1.0] * (len(tokens) - 1)})


# -- files -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def walled(tmp_path_factory):
    """A server whose root is <base>/root, real checkpoints (of the caller's own key, so that
    only the walls stop them) planted outside it, and a symlink in the root pointing out."""
    base = tmp_path_factory.mktemp("walls")
    with local_tinker.embedded(base / "root") as (url, server), \
            tinker.ServiceClient(base_url=url, api_key=local_tinker.LOCAL_API_KEY) as service:
        trainer = service.create_lora_training_client("tiny-chat", rank=2, seed=0).result()
        state = trainer.save_state("real").result().path
        sampler_path = trainer.save_weights_for_sampler("real").result().path
        run_dir = server.root / trainer.model_id
        planted = {"absolute": base / "planted", "dotdot": base / "weights" / "victim",
                   "symlinked": base / "elsewhere" / "weights" / "victim",
                   "symlinked-sampler": base / "elsewhere" / "sampler_weights" / "victim"}
        for name, target in planted.items():
            source = run_dir / ("sampler_weights" if "sampler" in name else "weights") / "real"
            shutil.copytree(source, target)
        (server.root / "linked").symlink_to(base / "elsewhere")
        yield {"url": url, "server": server, "service": service, "trainer": trainer,
               "state": state, "sampler_path": sampler_path, "base": base, "planted": planted}


def test_nothing_outside_the_root_is_deleted(walled):
    url, planted, base = walled["url"], walled["planted"], walled["base"]
    before = tree(base / "planted"), tree(base / "weights"), tree(base / "elsewhere")
    rest = tinker.RestClient(base_url=url, api_key=local_tinker.LOCAL_API_KEY)
    messages = [
        refused(lambda: rest.delete_checkpoint("x", str(planted["absolute"]))),
        refused(lambda: rest.delete_checkpoint("linked", "weights/victim")),
    ]
    with httpx.Client(base_url=url, headers=LOCAL) as raw:
        for path in ["/api/v1/training_runs/%2E%2E/checkpoints/weights/victim",
                     "/api/v1/training_runs/x/checkpoints/%2E%2E/%2E%2E/planted",
                     "/api/v1/training_runs/x/checkpoints/%2E%2E%2F%2E%2E%2Fplanted",
                     f"/api/v1/training_runs/x/checkpoints/{planted['absolute']}",
                     "/api/v1/training_runs/linked/checkpoints/weights/victim"]:
            response = raw.delete(path)
            assert response.status_code == 404, (path, response.text)
            messages.append(response.json()["detail"])
    assert (tree(base / "planted"), tree(base / "weights"), tree(base / "elsewhere")) == before
    assert all((target / "meta.json").is_file() for target in planted.values())
    assert all("no checkpoint" in m for m in messages), messages  # the answer for "absent"
    # The wall is not a blanket refusal: the caller's own checkpoint inside the root deletes.
    own = walled["trainer"].save_state("to-delete").result().path
    rest.delete_checkpoint(walled["trainer"].model_id, "weights/to-delete").result()
    assert not (walled["server"].root / own.removeprefix("tinker://")).exists()


def test_nothing_outside_the_root_is_read_or_listed(walled):
    service, trainer, planted = walled["service"], walled["trainer"], walled["planted"]
    absolute = f"tinker://{planted['absolute']}"
    refused(lambda: service.create_sampling_client(model_path=absolute))
    refused(lambda: service.create_training_client_from_state(absolute))
    with pytest.warns(FutureWarning):  # load_state is deprecated, and still served
        refused(lambda: trainer.load_state(absolute))
    refused(lambda: service.create_sampling_client(model_path="tinker://../weights/victim"))
    # A symlink inside the root that leads out: the same answer as for a checkpoint that does
    # not exist, so that the refusal says nothing about what is on the other side.
    linked = refused(lambda: service.create_sampling_client(
        model_path="tinker://linked/sampler_weights/victim"))
    absent = refused(lambda: service.create_sampling_client(
        model_path="tinker://linked/sampler_weights/absent"))
    assert linked.replace("victim", "X") == absent.replace("absent", "X")
    assert "not found" in linked and str(walled["base"]) not in linked
    refused(lambda: service.create_training_client_from_state("tinker://linked/weights/victim"))
    rest = tinker.RestClient(base_url=walled["url"], api_key=local_tinker.LOCAL_API_KEY)
    refused(lambda: rest.list_checkpoints("linked"))
    with httpx.Client(base_url=walled["url"], headers=LOCAL) as raw:
        for run in ["%2E%2E", "%2E", "linked", "%2Fetc"]:
            response = raw.get(f"/api/v1/training_runs/{run}/checkpoints")
            assert response.status_code == 404, (run, response.text)
    # The caller's own checkpoints inside the root still load and list.
    own = service.create_sampling_client(model_path=walled["sampler_path"]).result()
    assert own.sample(types.ModelInput.from_ints([5, 6, 7]), 1,
                      types.SamplingParams(max_tokens=2, seed=0)).result().sequences
    listed = rest.list_checkpoints(trainer.model_id).result().checkpoints
    assert walled["state"] in [c.tinker_path for c in listed]


# -- identity ----------------------------------------------------------------------------------
def forward_logprobs(trainer: tinker.TrainingClient) -> list[np.ndarray]:
    out = trainer.forward([datum([5, 6, 7, 8, 9, 10])], "cross_entropy").result()
    return [o["logprobs"].to_numpy() for o in out.loss_fn_outputs]


def test_a_second_key_cannot_reach_the_first_keys_objects(local_server):
    url = local_server[0]
    with tinker.ServiceClient(base_url=url, api_key=KEY_A) as first, \
            tinker.ServiceClient(base_url=url, api_key=KEY_B) as second:
        trainer = first.create_lora_training_client("tiny-chat", rank=2, seed=0).result()
        trainer.forward_backward([datum([1, 2, 3, 4])], "cross_entropy").result()
        trainer.optim_step(types.AdamParams(learning_rate=1e-2)).result()
        state = trainer.save_state("mine").result().path
        sampler_path = trainer.save_weights_for_sampler("mine").result().path
        sampler = trainer.save_weights_and_get_sampling_client().result()
        weights_before = forward_logprobs(trainer)

        rest_b = tinker.RestClient(base_url=url, api_key=KEY_B)
        refused(lambda: rest_b.list_checkpoints(trainer.model_id))
        refused(lambda: rest_b.delete_checkpoint(trainer.model_id, "weights/mine"))
        refused(lambda: second.create_sampling_client(model_path=sampler_path))
        refused(lambda: second.create_training_client_from_state(state))
        own_b = second.create_lora_training_client("tiny-chat", rank=2, seed=0).result()
        with pytest.warns(FutureWarning):
            refused(lambda: own_b.load_state(state))
        # A model id is printed in every tinker:// path: the second key tries to train it.
        hijack = tinker.TrainingClient(second.holder, model_seq_id=0, model_id=trainer.model_id,
                                       info=trainer.get_info())
        refused(lambda: hijack.forward_backward([datum([9, 8, 7, 6])], "cross_entropy"))
        refused(lambda: hijack.optim_step(types.AdamParams(learning_rate=1.0)))
        refused(lambda: hijack.save_state("stolen"))
        stolen = tinker.SamplingClient.from_sampler_handle(sampler.get_sampler_handle(),
                                                           api_key=KEY_B)
        refused(lambda: stolen.sample(types.ModelInput.from_ints([5]), 1,
                                      types.SamplingParams(max_tokens=1)))

        # Raw HTTP: the first key's request id and sampler, polled and read with the second.
        sampler_id = sampler._sampling_session_id  # the id the SDK sends with each sample
        request = types.SampleRequest(sampling_session_id=sampler_id,
                                      seq_id=10**6, num_samples=1,
                                      prompt=types.ModelInput.from_ints([5, 6]),
                                      sampling_params=types.SamplingParams(max_tokens=1, seed=0))
        with httpx.Client(base_url=url, timeout=HANG_CAP_S) as raw:
            submitted = raw.post("/api/v1/asample", headers={"X-API-Key": KEY_A},
                                 json=request.model_dump(mode="json"))
            request_id = submitted.json()["request_id"]
            poll = {"request_id": request_id}
            other = raw.post("/api/v1/retrieve_future", json=poll, headers={"X-API-Key": KEY_B})
            assert other.status_code == 404 and "unknown request id" in other.text
            mine = raw.post("/api/v1/retrieve_future", json=poll, headers={"X-API-Key": KEY_A})
            assert len(pb.SampleResponse.FromString(mine.content).sequences) == 1
            assert raw.get(f"/api/v1/samplers/{sampler_id}",
                           headers={"X-API-Key": KEY_B}).status_code == 404

        np.testing.assert_array_equal(forward_logprobs(trainer)[0], weights_before[0])
        listed = tinker.RestClient(base_url=url, api_key=KEY_A).list_checkpoints(
            trainer.model_id).result().checkpoints
        assert {state, sampler_path} <= {c.tinker_path for c in listed}
        assert first.create_sampling_client(model_path=sampler_path).result()


def test_requests_without_a_usable_key_are_401(local_server):
    with httpx.Client(base_url=local_server[0]) as raw:
        assert raw.get("/api/v1/healthz").status_code == 200  # says nothing about anyone
        calls = [("POST", "/api/v1/create_session", {}), ("POST", "/api/v1/retrieve_future",
                                                         {"request_id": "req-1"}),
                 ("GET", "/api/v1/training_runs/x/checkpoints", None),
                 ("DELETE", "/api/v1/training_runs/x/checkpoints/weights/y", None)]
        for headers in ({}, {"X-API-Key": "no-tml-prefix"}):
            for method, path, body in calls:
                response = raw.request(method, path, json=body, headers=headers)
                assert response.status_code == 401, (method, path, response.text)
                assert "API key" in response.json()["detail"]


def test_checkpoints_keep_their_owner_across_a_restart_and_store_no_key(tmp_path):
    with local_tinker.embedded(tmp_path) as (url, _), \
            tinker.ServiceClient(base_url=url, api_key=KEY_A) as first:
        trainer = first.create_lora_training_client("tiny-chat", rank=2).result()
        path = trainer.save_weights_for_sampler("kept").result().path
    meta = (tmp_path / path.removeprefix("tinker://") / "meta.json").read_text()
    assert hashlib.sha256(KEY_A.encode()).hexdigest() in meta
    assert not any(KEY_A.encode() in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    with local_tinker.embedded(tmp_path) as (url, _):
        with tinker.ServiceClient(base_url=url, api_key=KEY_B) as second:
            assert "not found" in refused(lambda: second.create_sampling_client(
                model_path=path))
        with tinker.ServiceClient(base_url=url, api_key=KEY_A) as first_again:
            assert first_again.create_sampling_client(model_path=path).result()


def start_server(*args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`python -m local_tinker serve ARGS`, once its banner says it listens: (process, url)."""
    server = subprocess.Popen([sys.executable, "-m", "local_tinker", "serve", *args], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env)
    banner = server.stdout.readline()
    assert "local tinker server on " in banner, server.stderr.read()
    return server, banner.split("local tinker server on ")[1].split(" ")[0]


def test_beyond_loopback_only_the_operators_key_is_served(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(local_tinker.API_KEY_ENV, raising=False)
    assert serve_main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --host 0.0.0.0 serves beyond loopback") and \
        error.count("\n") == 1

    env = {**os.environ, local_tinker.API_KEY_ENV: OPERATOR_KEY}
    server, url = start_server("--host", "0.0.0.0", "--port", "0", "--root", str(tmp_path),
                               env=env)
    try:
        url = url.replace("0.0.0.0", "127.0.0.1")
        with tinker.ServiceClient(base_url=url, api_key=OPERATOR_KEY) as operator:
            trainer = operator.create_lora_training_client("tiny-chat", rank=2).result()
            assert trainer.get_info().lora_rank == 2
        with tinker.ServiceClient(base_url=url, api_key=local_tinker.LOCAL_API_KEY) as stranger, \
                pytest.raises(tinker.AuthenticationError, match="not accepted"):
            stranger.create_lora_training_client("tiny-chat").result()
        assert httpx.post(url + "/api/v1/create_session", json={}).status_code == 401
    finally:
        server.terminate()
        out, err = server.communicate()
    assert err.startswith("warning: serving on 0.0.0.0, beyond loopback")
    assert OPERATOR_KEY not in out + err


# -- restarts ----------------------------------------------------------------------------------
class _Submitted(logging.Handler):
    """From httpx's log of answers: `event` is set once a sample submission was answered (its
    request id exists); `unknown_at` is when a poll was first answered 404."""

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()
        self.unknown_at: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "/api/v1/asample" in message and " 200 " in message:
            self.event.set()
        if "/api/v1/retrieve_future" in message and " 404 " in message:
            self.unknown_at = self.unknown_at or time.monotonic()


def test_a_client_waiting_across_a_restart_gets_an_error_not_another_result(tmp_path):
    """Before: ids restarted at req-1, and a client polling across a restart received another
    client's sample as its own. The second server also takes the port back at once
    (SO_REUSEADDR): the first one's connections, cut by SIGKILL, no longer hold it."""
    first, url = start_server("--port", "0", "--root", str(tmp_path), "--latency_s", "600")
    port = url.rsplit(":", 1)[1]
    submitted = _Submitted()
    httpx_log = logging.getLogger("httpx")
    level = httpx_log.level
    httpx_log.setLevel(logging.INFO)
    httpx_log.addHandler(submitted)
    outcome: dict = {}
    waiting = tinker.ServiceClient(base_url=url, api_key=local_tinker.LOCAL_API_KEY)
    second = None
    try:
        sampler = waiting.create_sampling_client(base_model="tiny-chat").result()
        prompt = types.ModelInput.from_ints([5, 6, 7])
        future = sampler.sample(prompt, 1, types.SamplingParams(max_tokens=3, seed=1))
        assert submitted.event.wait(HANG_CAP_S)

        def wait() -> None:
            try:
                outcome["result"] = future.result()
            except Exception as exc:  # what the test is about
                outcome["error"] = exc
            outcome["at"] = time.monotonic()
        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        first.kill()
        first.wait()
        second, _ = start_server("--port", port, "--root", str(tmp_path))
        ready = time.monotonic()
        with tinker.ServiceClient(base_url=url, api_key=local_tinker.LOCAL_API_KEY) as other:
            theirs = other.create_sampling_client(base_model="tiny-chat").result()
            for seed in range(3):  # request ids the old numbering would have reused
                theirs.sample(prompt, 1, types.SamplingParams(max_tokens=3, seed=seed)).result()
        waiter.join(HANG_CAP_S)
        assert "result" not in outcome, "the waiting client received a result"
        assert "unknown request id" in str(outcome["error"])
        assert submitted.unknown_at is not None
        print(f"the SDK raised {outcome['at'] - ready:.1f} s after the new server listened, "
              f"{outcome['at'] - submitted.unknown_at:.3f} s after its first 404")
    finally:
        httpx_log.removeHandler(submitted)
        httpx_log.setLevel(level)
        with contextlib.suppress(Exception):  # its session died with the first server
            waiting.close("errored").result(timeout=30)
        for server in (first, second):
            if server is not None and server.poll() is None:
                server.terminate()
                server.communicate()


# -- settings ----------------------------------------------------------------------------------
def _settings_cases(tmp_path: Path) -> list[tuple[list[str], str]]:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    good = ["--api_key", OPERATOR_KEY]
    return [
        (["--fault_rate", "2"], "--fault_rate"), (["--fault_rate", "nan"], "--fault_rate"),
        (["--latency_s", "nan"], "--latency_s"), (["--latency_s", "inf"], "--latency_s"),
        (["--latency_s", "-1"], "--latency_s"), (["--port", "70000"], "--port"),
        (["--port", "-1"], "--port"), (["--root", str(a_file)], "--root"),
        (["--root", str(a_file / "sub")], "--root"), (["--device", "cuda:7"], "--device cuda:7"),
        (["--device", "tpu9"], "--device"), (["--model", "no-such/model"], "--model"),
        (["--host", "0.0.0.0"], "--host"), (["--api_key", "tml-short"], "--api_key"),
        (["--api_key", "no-prefix-but-long-enough"], "--api_key"),
        (["--api_key", local_tinker.LOCAL_API_KEY], "--api_key"),
        (["--host", "256.0.0.1", *good], "256.0.0.1"), (["--bogus"], "--bogus"),
    ]


def exit_code(argv: list[str]) -> int:
    try:
        return serve_main(argv)
    except SystemExit as ended:  # argparse's checks end the command themselves
        return int(ended.code or 0)


def test_bad_settings_are_one_error_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(local_tinker.API_KEY_ENV, raising=False)
    monkeypatch.delenv("LOCAL_TINKER_DEVICE", raising=False)
    for args, named in _settings_cases(tmp_path):
        code = exit_code(["serve", "--port", "0", *args])
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert err.startswith("error: ") and err.count("\n") == 1, (args, err)
        assert named in err, (args, err)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 2 MiB filesystem of our own (needs mount rights; skipped without them)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True)
    if made.returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_read_only_root_is_one_line_and_exit_1(tiny_tmpfs, capsys):
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    assert serve_main(["serve", "--port", "0", "--root", str(tiny_tmpfs / "root")]) == 1
    err = capsys.readouterr().err
    assert err == f"error: --root {tiny_tmpfs / 'root'} cannot be written (Read-only file " \
                  "system)\n"


def test_a_full_root_fails_the_save_clearly_and_the_server_keeps_serving(tiny_tmpfs):
    with local_tinker.embedded(tiny_tmpfs) as (url, _), \
            tinker.ServiceClient(base_url=url, api_key=local_tinker.LOCAL_API_KEY) as service:
        trainer = service.create_lora_training_client("tiny-chat", rank=2).result()
        with contextlib.suppress(OSError):  # fill what is left
            with open(tiny_tmpfs / "filler", "wb") as filler:
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
        error = refused(lambda: trainer.save_state("no-room"))
        assert "the server's storage failed (No space left on device)" in error
        assert str(tiny_tmpfs) not in error
        assert not list(tiny_tmpfs.rglob("*no-room*"))  # nothing half-written left behind
        assert forward_logprobs(trainer)  # still serving
        (tiny_tmpfs / "filler").unlink()
        assert trainer.save_state("room-again").result().path.endswith("room-again")


# -- payloads and parameters -------------------------------------------------------------------
@pytest.fixture(scope="module")
def session(local_server):
    url = local_server[0]
    with tinker.ServiceClient(base_url=url, api_key=local_tinker.LOCAL_API_KEY) as service:
        trainer = service.create_lora_training_client("tiny-chat", rank=2, seed=0).result()
        yield {"url": url, "service": service, "trainer": trainer,
               "sampler": trainer.save_weights_and_get_sampling_client().result(),
               "state": trainer.save_state("walls-session").result().path}


def test_malformed_payloads_are_4xx_with_the_reason(session, tmp_path):
    model_id = session["trainer"].model_id
    bad_dtype = pb.ForwardBackwardRequest(model_id=model_id, seq_id=10**6, loss_fn="cross_entropy")
    item = bad_dtype.data.add()
    item.model_input.add().encoded_text.tokens = np.asarray([1, 2], np.int32).tobytes()
    item.loss_fn_inputs["target_tokens"].CopyFrom(pb.Tensor(dense=b"\0" * 16, dtype=99))
    proto = {"content-type": "application/x-protobuf"}
    cases = [
        ("/api/v1/forward_backward", b"\xff\x00 not protobuf", proto, 400, "not a protobuf"),
        ("/api/v1/forward_backward", bad_dtype.SerializeToString(), proto, 400, "dtype 99"),
        ("/api/v1/forward_backward", b'{"model_id": "x"}', {"content-type": "application/json"},
         415, "JSON is not served"),
        ("/api/v1/create_session", b"not json", {}, 400, "not JSON"),
        ("/api/v1/asample", b'{"num_samples": "many"}', {}, 400, "invalid SampleRequest"),
        ("/api/v1/optim_step", b"[1, 2]", {}, 400, "invalid OptimStepRequest"),
        ("/api/v1/no_such_route", b"{}", {}, 404, "no call of the tinker 0.38 SDK uses it"),
    ]
    with httpx.Client(base_url=session["url"], headers=LOCAL) as raw:
        for path, body, headers, status, reason in cases:
            response = raw.post(path, content=body, headers=headers)
            assert response.status_code == status, (path, response.text)
            assert reason in response.json()["detail"], (path, response.text)
    with local_tinker.embedded(tmp_path, max_body_bytes=2000) as (url, _):
        too_big = httpx.post(url + "/api/v1/create_session", content=b" " * 3000, headers=LOCAL)
        assert too_big.status_code == 413 and "limit of 2000 bytes" in too_big.text

        def chunks():
            yield b" " * 1500
            yield b" " * 1500
        streamed = httpx.post(url + "/api/v1/create_session", content=chunks(), headers=LOCAL)
        assert streamed.status_code == 413


def test_refusals_name_the_feature_and_the_sdk_call(session):
    rest = tinker.RestClient(base_url=session["url"], api_key=local_tinker.LOCAL_API_KEY)
    state = session["state"]
    for call, words in [
        (lambda: rest.unpublish_checkpoint_from_tinker_path(state),
         "RestClient.unpublish_checkpoint_from_tinker_path"),
        (lambda: rest.publish_checkpoint_from_tinker_path(state),
         "RestClient.publish_checkpoint_from_tinker_path"),
        (lambda: rest.set_checkpoint_ttl_from_tinker_path(state, 60),
         "RestClient.set_checkpoint_ttl_from_tinker_path"),
        (lambda: rest.get_training_run(session["trainer"].model_id), "RestClient.get_training_run"),
        (lambda: rest.list_training_runs(), "RestClient.list_training_runs"),
    ]:
        error = refused(call)
        assert words in error and "does not serve" in error, error
    listed = rest.list_checkpoints(session["trainer"].model_id).result().checkpoints
    assert state in [c.tinker_path for c in listed]  # unpublish did not delete it


def test_arguments_the_server_cannot_honour_are_refused(session):
    service, state = session["service"], session["state"]
    assert "Adam only" in refused(lambda: service.create_training_client_from_state(
        state, optimizer=types.DimuonOptimizerConfig()))
    assert "cannot move it onto base_model='tiny-math'" in refused(
        lambda: service.create_training_client_from_state(state, base_model="tiny-math"))
    assert "weights_access_token" in refused(lambda: service.create_training_client_from_state(
        state, weights_access_token="tok"))
    honoured = service.create_training_client_from_state(
        state, base_model="tiny-chat", optimizer=types.AdamOptimizerConfig()).result()
    assert honoured.get_info().lora_rank == 2


def test_bad_prompts_and_sampling_params_are_400(session):
    sampler, trainer = session["sampler"], session["trainer"]
    prompt = types.ModelInput.from_ints([5, 6, 7])

    def sample(prompt=prompt, num_samples=1, **params):
        return lambda: sampler.sample(prompt, num_samples, types.SamplingParams(**params))
    for call, words in [
        (sample(types.ModelInput.from_ints([5, 10**6])), "token id 1000000, outside tiny-chat's"),
        (sample(types.ModelInput.from_ints([-1])), "token id -1"),
        (sample(types.ModelInput.from_ints([])), "the prompt is empty"),
        (sample(temperature=-1.0, max_tokens=2), "temperature"),
        (sample(top_p=0.0, max_tokens=2), "top_p"), (sample(top_p=1.5, max_tokens=2), "top_p"),
        (sample(top_k=-2, max_tokens=2), "top_k"), (sample(max_tokens=0), "max_tokens"),
        (sample(max_tokens=10**6), "prompt (3 tokens) + max_tokens (1000000) exceeds the "
                                   "context of tiny-chat (4096 tokens)"),
        (sample(num_samples=10**6, max_tokens=2), "num_samples must be between 1 and 256"),
        (sample(stop=[], max_tokens=2), "stop=[]"), (sample(stop=[10**6]), "stop token id"),
        (sample(seed=-2**70, max_tokens=2), "seed"),
    ]:
        error = refused(call)
        assert "400" in error and words in error, (words, error)
    # The SDK cannot send a NaN (its JSON encoder refuses); raw JSON can.
    body = types.SampleRequest(sampling_session_id=sampler._sampling_session_id, seq_id=10**7,
                               prompt=prompt, sampling_params=types.SamplingParams(max_tokens=2)
                               ).model_dump(mode="json")
    body["sampling_params"]["temperature"] = float("nan")
    nan = httpx.post(session["url"] + "/api/v1/asample", headers=LOCAL,
                     content=json.dumps(body))  # json.dumps writes NaN, as some clients do
    assert nan.status_code == 400 and "temperature must be a finite number" in nan.text
    long_datum = datum(list(range(1, 200)) * 21)  # 4178 tokens > the 4096 of tiny-chat
    assert "exceed tiny-chat's context of 4096" in refused(
        lambda: trainer.forward([long_datum], "cross_entropy"))
    unknown_token = types.Datum(model_input=types.ModelInput.from_ints([1, 10**5, 3]),
                                loss_fn_inputs={"target_tokens": [2, 3, 4],
                                                "weights": [1.0, 1.0, 1.0]})
    assert "token id 100000, outside tiny-chat's vocabulary" in refused(
        lambda: trainer.forward([unknown_token], "cross_entropy"))
