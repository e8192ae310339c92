"""Encryption at rest for the tokens the bridge stores (SPEC §9): Fernet, with rotation.

`BRIDGE_SECRET_KEY` holds one or more comma-separated Fernet keys; the first encrypts,
all of them decrypt (MultiFernet), so `crm-bridge rotate-key` can put a new key first and
re-encrypt every stored token without a moment in which a token cannot be read.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from bridge.errors import ConfigError


class TokenCipher:
    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ConfigError(
                "BRIDGE_SECRET_KEY is not set: stored CRM tokens must be encrypted; "
                "generate a key with `crm-bridge rotate-key --generate`"
            )
        try:
            self._fernet = MultiFernet([Fernet(key.encode()) for key in keys])
        except ValueError as exc:
            raise ConfigError(
                "BRIDGE_SECRET_KEY: each key must be 32 url-safe base64-encoded bytes"
            ) from exc

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken as exc:
            raise ConfigError(
                "a stored token cannot be decrypted with BRIDGE_SECRET_KEY "
                "(was the key changed without `crm-bridge rotate-key`?)"
            ) from exc

    def rotate(self, ciphertext: str) -> str:
        return self._fernet.rotate(ciphertext.encode()).decode()

    @staticmethod
    def generate_key() -> str:
        return Fernet.generate_key().decode()
