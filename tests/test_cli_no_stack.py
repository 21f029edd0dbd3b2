"""The CLI with no local stack running: it says so, names `endpoints up`, and writes nothing.

Real CLI processes with piped output; nothing listens on this stack's ports.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_support import IsolatedStack


@pytest.fixture(scope="module")
def nostack(tmp_path_factory: pytest.TempPathFactory) -> IsolatedStack:
    stack = IsolatedStack.make(tmp_path_factory.mktemp("nostack") / "data")
    stack.register_demo()
    return stack


def test_create_without_a_stack_names_up_and_writes_nothing(nostack: IsolatedStack) -> None:
    before = nostack.registry().counts()
    result = nostack.cli("create", "chat", "--checkpoint", "demo-tiny-llama", "--max-context", "1024",
                         "--precision", "float32")
    assert result.returncode == 1
    assert "endpoints up" in result.stderr and "not running" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert nostack.registry().counts() == before


def test_bad_input_is_rejected_before_anything_is_looked_up(nostack: IsolatedStack) -> None:
    before = nostack.registry().counts()
    result = nostack.cli("create", "Bad_Name", "--checkpoint", "nope", "--max-context", "0")
    assert result.returncode == 2
    assert "Rejected: 3 problem(s)" in result.stderr
    for code in ("invalid_name", "checkpoint_not_found", "invalid_max_context"):
        assert code in result.stderr
    assert "endpoints up" not in result.stderr
    assert nostack.registry().counts() == before


def test_status_exits_1_with_the_table_when_the_stack_is_down(nostack: IsolatedStack) -> None:
    result = nostack.cli("status")
    assert result.returncode == 1
    assert "Prefect server" in result.stdout and "gateway" in result.stdout and "down" in result.stdout
    assert "endpoints up" in result.stderr


def test_down_with_nothing_running_says_so(nostack: IsolatedStack) -> None:
    result = nostack.cli("down")
    assert result.returncode == 0
    assert "Nothing of the local stack is running" in result.stdout


def test_an_endpoint_without_a_policy_is_refused_before_anything_happens(nostack: IsolatedStack,
                                                                         tmp_path: Path) -> None:
    before = nostack.registry().counts()
    result = nostack.cli("emit-finetune-completed", "--job", "j1", "--checkpoint-path", str(tmp_path),
                         "--endpoint", "chat")
    assert result.returncode == 2
    assert "--endpoint chat needs --policy create or --policy replace" in result.stderr
    assert nostack.registry().counts() == before


def test_bad_replica_counts_are_rejected_and_write_nothing(nostack: IsolatedStack) -> None:
    before = nostack.registry().counts()
    result = nostack.cli("create", "chat", "--checkpoint", "demo-tiny-llama", "--max-context", "1024",
                         "--precision", "float32", "--min-replicas", "3", "--max-replicas", "2")
    assert result.returncode == 2
    assert "max_replicas (invalid_replicas): max_replicas (2) is below min_replicas (3)" in result.stderr
    scaled = nostack.cli("scale", "chat", "--min-replicas", "0")
    assert scaled.returncode == 2 and "scaling to zero is not supported yet" in scaled.stderr
    assert nostack.registry().counts() == before
