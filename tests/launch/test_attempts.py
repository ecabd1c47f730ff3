"""Which attempt of a torchrun group a process belongs to, the same on every node (launch/where.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch.distributed as dist

from itwinai_lightning.launch import where
from tests.foundation.conftest import free_port


def test_each_start_of_a_rank_is_the_next_attempt_whatever_its_agent_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=30))  # the agent's
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")  # node 1's agent saw a membership change only
    seen = []
    for rank in ("0", "1", "0", "1"):  # two attempts of a 2-rank group
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setattr(where, "_attempt", [])  # a new process
        seen.append(where.attempt_number())
        assert where.attempt_number() == seen[-1]  # asked again in the same process: the same answer
    assert seen == [0, 0, 1, 1]
    assert store.get("itwinai/starts/rank0") == b"2"


def test_without_the_agent_store_it_is_the_agent_s_restart_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    monkeypatch.setattr(where, "_attempt", [])
    assert where.attempt_number() == 2
