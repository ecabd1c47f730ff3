"""Tracking fixtures: a real MLflow server (SQLite, 127.0.0.1, free port), restartable for fault tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.engines import require, require_module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MLflowServer:
    """``mlflow server`` as a child process; :meth:`stop` / :meth:`start` simulate an outage."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.uri = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 90.0) -> None:
        artifacts = self.directory / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.directory}/mlflow.db",
            "--artifacts-destination", str(artifacts),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        log = (self.directory / "server.log").open("ab")
        # a tracking server: without MLflow 3's GenAI job runner (seven huey consumer processes that
        # import MLflow for ~20 s of CPU after /health answers, then poll the database)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited: {(self.directory / 'server.log').read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"mlflow server on {self.uri} not healthy after {timeout_s} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(
                self.proc.pid, signal.SIGKILL
            )  # the whole group: mlflow spawns uvicorn/gunicorn workers
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLflowServer]:
    require_module("mlflow", 'pip install "itwinai-lightning[mlflow]"')
    server = MLflowServer(tmp_path_factory.mktemp("mlflow"), free_port())
    try:
        server.start()
    except (OSError, RuntimeError, TimeoutError) as err:
        require(False, "an MLflow server", f"start failed: {err}")
    yield server
    server.stop()


@pytest.fixture
def wandb_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    require_module("wandb", 'pip install "itwinai-lightning[wandb]"')
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
