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
os.environ.pop("WANDB_API_KEY", None)
os.environ.pop("TINKER_API_KEY", None)
# Local-backend checkpoints of the whole session go to a throwaway root, not ~/.cache.
os.environ["LOCAL_TINKER_ROOT"] = tempfile.mkdtemp(prefix="local_tinker_tests_")


# ---- the service client the seed write-up's code runs against (tests/seed_code.py) ---------

import pytest  # noqa: E402

_CREATES_CLIENTS = ("create_lora_training_client", "create_sampling_client",
                    "save_weights_and_get_sampling_client")


class _ClientsNotFutures:
    """Today's local client with the SDK's habit the seed's code relies on: the SDK's
    `create_lora_training_client` / `save_weights_and_get_sampling_client` results are usable
    as clients at once, while `local_tinker`'s are plain futures. Goes away with the SDK."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if name not in _CREATES_CLIENTS:
            return attr
        return lambda *args, **kwargs: _ClientsNotFutures(attr(*args, **kwargs).result())


@pytest.fixture
def service_client(tmp_path):
    """The service client for the seed's code: the one line to change when the local backend
    becomes a server for the real SDK (then `tinker.ServiceClient(base_url=...)`)."""
    import local_tinker

    return _ClientsNotFutures(local_tinker.ServiceClient(root=tmp_path / "local_tinker"))
