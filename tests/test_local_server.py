"""The local server as a service: several clients at once, and `python -m local_tinker serve`."""

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import tinker
from tinker import types

import local_tinker
from common.datums import conversation_datum

ROOT = Path(__file__).resolve().parent.parent
HANG_CAP_S = 600  # only a hang reaches it; the release normally follows within milliseconds


def foo_data(tokenizer, n: int = 6) -> list[types.Datum]:
    return [conversation_datum(tokenizer, [{"role": "user", "content": f"question {i}?"},
                                           {"role": "assistant", "content": "foo"}], 256)
            for i in range(n)]


def train(service: tinker.ServiceClient, steps: int, seed: int) -> list[float]:
    trainer = service.create_lora_training_client("tiny-chat", rank=4, seed=seed).result()
    data = foo_data(trainer.get_tokenizer())
    losses = []
    for _ in range(steps):
        fwd = trainer.forward_backward(data, "cross_entropy")
        trainer.optim_step(types.AdamParams(learning_rate=1e-3))
        losses.append(fwd.result().metrics["loss:sum"])
    return losses


def test_two_clients_at_once_get_what_each_gets_alone(local_server):
    """Each training client's calls run in its order, whatever the other client does."""
    url = local_server[0]
    clients = [tinker.ServiceClient(base_url=url, api_key=local_tinker.LOCAL_API_KEY)
               for _ in range(2)]
    alone = [train(clients[0], 3, seed) for seed in (1, 2)]
    together: list[list[float]] = [[], []]
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(
        i, train(clients[i], 3, i + 1))) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together == alone
    for client in clients:
        client.close("success").result()


def test_a_second_client_does_not_wait_behind_the_first_clients_queue(service_client):
    busy = service_client.create_lora_training_client("tiny-chat", rank=4, seed=0).result()
    other = service_client.create_lora_training_client("tiny-chat", rank=4, seed=1).result()
    data = foo_data(busy.get_tokenizer(), 16)
    queued = [busy.forward(data, "cross_entropy") for _ in range(12)]
    other.forward(data[:1], "cross_entropy").result()
    # Lanes take turns: the other client's call ran after at most one more of the busy
    # client's calls, so most of the busy queue is still waiting.
    assert not queued[-1].future().done()
    assert np.isfinite([f.result().metrics["loss:sum"] for f in queued]).all()


def test_serve_command_serves_and_refuses_a_taken_port(tmp_path):
    server = subprocess.Popen(
        [sys.executable, "-m", "local_tinker", "serve", "--port", "0", "--root", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = server.stdout.readline()  # printed once the socket listens
        url = banner.split("local tinker server on ")[1].split(" ")[0]
        with tinker.ServiceClient(base_url=url, api_key=local_tinker.LOCAL_API_KEY) as service:
            assert train(service, 2, 0)[1] < train(service, 1, 0)[0] + 1e-3
        port = int(url.rsplit(":", 1)[1])
        taken = subprocess.run(
            [sys.executable, "-m", "local_tinker", "serve", "--port", str(port)],
            cwd=ROOT, capture_output=True, text=True)
        assert taken.returncode == 2
        assert f"error: cannot listen on 127.0.0.1:{port}" in taken.stderr
        assert "Traceback" not in taken.stderr
    finally:
        server.terminate()
        server.wait()


def test_embedded_server_binds_loopback_only(local_server):
    url, _ = local_server
    host, port = url.removeprefix("http://").split(":")
    assert host == "127.0.0.1"
    with socket.create_connection((host, int(port))):
        pass


def test_a_heartbeat_for_a_session_the_server_does_not_have_is_told_to_stop(local_server):
    """410 is the one answer on which the SDK stops a session's heartbeats. A session this server
    never had (it restarted, or a later server took the port) used to get 404s, and the SDK
    then warned "Tinker is down" every 10 s for the rest of the process."""
    with httpx.Client(base_url=local_server[0],
                      headers={"X-API-Key": local_tinker.LOCAL_API_KEY}) as raw:
        answer = raw.post("/api/v1/session_heartbeat", json={"session_id": "local-never-had"})
    assert answer.status_code == 410, answer.text
    assert "not open on this server" in answer.json()["detail"]


def test_scripts_finish_their_session_so_the_server_frees_its_models(local_server, tmp_path):
    """A run's session ends with the run: the server drops its training model and samplers
    (before, an in-process run's session lived, heartbeating, until the process exited)."""
    import evaluate
    import train_sft

    url, server = local_server
    sessions, models, samplers = (set(server._sessions), set(server.runtime.models),
                                  set(server.runtime.samplers))
    train_sft.main(train_sft.Config(backend="local", base_url=url, max_steps=2, batch_size=4,
                                    log_dir=tmp_path / "sft", wandb_mode="disabled",
                                    sample_every=0))
    evaluate.main(evaluate.Config(backend="local", base_url=url, checkpoint=[str(tmp_path / "sft")],
                                  task="chat", dataset="foo", num_problems=2, max_tokens=4,
                                  wandb_mode="disabled", log_dir=tmp_path / "eval"))
    assert set(server._sessions) == sessions  # both sessions finished, none left behind
    # Their models and samplers are released by jobs queued behind their last calls.
    deadline = time.monotonic() + HANG_CAP_S
    while (set(server.runtime.models), set(server.runtime.samplers)) != (models, samplers):
        assert time.monotonic() < deadline, (server.runtime.models, server.runtime.samplers)
        time.sleep(0.05)
