"""Shared test setup: no network, no keys, W&B offline, everything under a temp dir."""

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Set before any test imports datasets/transformers/wandb: a hub lookup would otherwise
# retry for tens of seconds before failing, and W&B would try to reach its server.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
# One torch thread per process: tests run beside other jobs (and spawn runs of their own), and
# torch's two spinning threads on a busy 2-core machine made a 20-step SFT run 3.3x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("WANDB_API_KEY", None)
os.environ.pop("TINKER_API_KEY", None)
# Local-backend checkpoints of the whole session go to a throwaway root, not ~/.cache.
os.environ["LOCAL_TINKER_ROOT"] = tempfile.mkdtemp(prefix="local_tinker_tests_")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def local_server():
    """(base_url, server): one embedded local server for the whole test session."""
    import local_tinker

    with local_tinker.embedded(Path(os.environ["LOCAL_TINKER_ROOT"])) as running:
        yield running


@pytest.fixture
def service_client(local_server):
    """The real tinker SDK's ServiceClient, talking HTTP to the embedded local server."""
    import tinker

    import local_tinker

    with tinker.ServiceClient(base_url=local_server[0],
                              api_key=local_tinker.LOCAL_API_KEY) as client:
        yield client


@pytest.fixture
def silent_url():
    """http://127.0.0.1:<port> of a server that accepts connections and never answers."""
    import socket
    import threading

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    held = []

    def accept_until_closed() -> None:
        try:
            while True:
                held.append(silent.accept())
        except OSError:  # the socket closed at teardown
            pass

    threading.Thread(target=accept_until_closed, daemon=True).start()
    yield f"http://127.0.0.1:{silent.getsockname()[1]}"
    silent.close()
    for connection, _ in held:
        connection.close()
