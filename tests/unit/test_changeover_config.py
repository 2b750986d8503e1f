"""Changeover config: local-only control endpoint, trust required, rollback window sanity."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from lineguard.changeover.config import ChangeoverConfig, ControlConfig, RollbackConfig
from lineguard.changeover.signing import public_key_text

KEY = public_key_text(Ed25519PrivateKey.generate())


def test_a_config_without_trust_is_refused_unless_unsigned_is_allowed() -> None:
    with pytest.raises(ValidationError, match="no trusted_keys"):
        ChangeoverConfig(store_dir=Path("/s"))
    assert ChangeoverConfig(store_dir=Path("/s"), allow_unsigned=True).allow_unsigned


@pytest.mark.parametrize("bad", ["not base64!", "AAAA"])
def test_malformed_trusted_keys_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError, match="trusted key"):
        ChangeoverConfig(store_dir=Path("/s"), trusted_keys=[bad])


def test_control_endpoint_is_local_only_unless_allowed() -> None:
    tok = Path("/t")
    assert ControlConfig(token_file=tok).host == "127.0.0.1"
    assert ControlConfig(host="::1", token_file=tok).host == "::1"
    with pytest.raises(ValidationError, match="not loopback"):
        ControlConfig(host="0.0.0.0", token_file=tok)
    assert ControlConfig(host="0.0.0.0", token_file=tok, allow_remote=True).allow_remote
    assert ControlConfig(host="10.0.0.5", token_file=tok, unix_socket=Path("/run/lg.sock")).unix_socket


def test_rollback_window_must_be_judgeable() -> None:
    with pytest.raises(ValidationError, match="min_parts"):
        RollbackConfig(watch_parts=10, min_parts=20)
    with pytest.raises(ValidationError, match="reject_rate_min"):
        RollbackConfig(reject_rate_min_fraction=0.5, reject_rate_max_fraction=0.1)


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ValidationError):
        ChangeoverConfig(store_dir=Path("/s"), trusted_keys=[KEY], swap_timeout=3)  # type: ignore[call-arg]
