"""The generated token: created once, private, shared by every process."""

from __future__ import annotations

import stat
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from pydantic import SecretStr

from ownchat.auth import load_or_create_token, token_matches, token_path


def test_the_first_start_creates_a_private_token_later_ones_reuse_it(tmp_path: Path) -> None:
    token = load_or_create_token(tmp_path)
    assert len(token) >= 32
    assert stat.S_IMODE(token_path(tmp_path).stat().st_mode) == 0o600
    assert load_or_create_token(tmp_path) == token


def test_a_configured_token_wins(tmp_path: Path) -> None:
    assert load_or_create_token(tmp_path, SecretStr("configured")) == "configured"
    assert not token_path(tmp_path).exists()


def test_processes_starting_together_agree_on_one_token(tmp_path: Path) -> None:
    with ProcessPoolExecutor(max_workers=4) as pool:
        tokens = set(pool.map(load_or_create_token, [tmp_path] * 8))
    assert len(tokens) == 1


def test_token_matching() -> None:
    assert token_matches("Bearer abc", "abc")
    assert token_matches("bearer abc", "abc")
    assert not token_matches("Bearer abd", "abc")
    assert not token_matches("Basic abc", "abc")
    assert not token_matches(None, "abc")
    assert not token_matches("Bearer ", "abc")
