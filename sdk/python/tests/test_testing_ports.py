"""Free ports for services that tests and benchmarks start."""

from __future__ import annotations

import socket

import pytest

from ownchat import testing
from ownchat.testing import _ephemeral_range, free_port


def test_free_ports_are_bindable_distinct_and_outside_the_ephemeral_range() -> None:
    low, high = _ephemeral_range()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    for port in ports:
        # A client socket's own port comes from [low, high]: a service's port there
        # could be taken by an outgoing connection before the service binds it.
        assert not low <= port <= high
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", port))


def test_a_port_in_use_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    held, other = free_port(), free_port()
    testing._handed_out.difference_update({held, other})
    draws = iter([held, other])
    monkeypatch.setattr(testing.random, "randrange", lambda *_: next(draws))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", held))
        holder.listen()
        assert free_port() == other
