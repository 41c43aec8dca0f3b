"""Per-device API keys: random, prefixed, stored only as hashes. This module writes the keys file (the
`tidegate keys` commands, the MQTT broker files); servers verify keys natively (`tidegate._native.Keys`).

A key reads `tg_<key id>_<secret>`. The key id finds the entry, which holds the secret's SHA-256 in hex; the
server compares it in constant time. A device holds at most two active keys, so keys rotate without downtime.
Operator keys (`tgo_<key id>_<secret>`, `tidegate keys add-operator`) open the operations endpoints that list the
fleet; they are stored and checked the same way, and are no device's key. The store is a JSON file under the data
dir, written atomically (a new file renamed over the old); servers re-read it when it changes (checked at most
every half second), so a revocation takes effect within a second without a restart.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREFIX = "tg_"
OPERATOR_PREFIX = "tgo_"
MAX_KEYS_PER_DEVICE = 2


DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a `device_id` may be, as the telemetry contract checks it."""


@dataclass(frozen=True)
class KeyEntry:
    key_id: str
    device_id: str
    secret_sha256: str
    created_at: float
    mqtt_password_hash: str | None = None
    """The whole key hashed as mosquitto's password file wants it (`tidegate mqtt-acl` writes it there); absent
    for keys made before tidegate stored one."""


@dataclass(frozen=True)
class OperatorEntry:
    key_id: str
    name: str
    secret_sha256: str
    created_at: float


def _split(presented: str, prefix: str) -> tuple[str, str] | None:
    """`(key id, secret)` of a key with `prefix`, else None."""
    if not presented.startswith(prefix):
        return None
    key_id, _, secret = presented[len(prefix) :].partition("_")
    return key_id, secret


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    """The key file, as the `tidegate keys` commands read and write it (servers verify with `_native.Keys`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, KeyEntry] = {}
        self._operators: dict[str, OperatorEntry] = {}
        self._stamp: tuple[int, int] | None = None
        self._load()

    def _load(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._entries, self._operators, self._stamp = {}, {}, None
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        document: dict[str, Any] = json.loads(self.path.read_text() or "{}")
        self._entries = {
            item["key_id"]: KeyEntry(
                item["key_id"],
                item["device_id"],
                item["secret_sha256"],
                item["created_at"],
                item.get("mqtt_password_hash"),
            )
            for item in document.get("keys", [])
        }
        self._operators = {
            item["key_id"]: OperatorEntry(item["key_id"], item["name"], item["secret_sha256"], item["created_at"])
            for item in document.get("operators", [])
        }
        self._stamp = stamp

    def operators(self) -> list[OperatorEntry]:
        self._load()
        return sorted(self._operators.values(), key=lambda e: (e.name, e.created_at))

    def add_operator(self, name: str) -> str:
        """Creates an operator key named `name` (who holds it: a person, a dashboard) and returns it (the only time
        it is ever shown)."""
        if not name.strip():
            raise ValueError("an operator key needs a name (who holds it)")
        self._load()
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32).replace("_", "-")
        self._operators[key_id] = OperatorEntry(key_id, name.strip(), _digest(secret), time.time())
        self._save()
        return f"{OPERATOR_PREFIX}{key_id}_{secret}"

    def entries(self) -> list[KeyEntry]:
        self._load()
        return sorted(self._entries.values(), key=lambda e: (e.device_id, e.created_at))

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "keys": [entry.__dict__ for entry in self.entries_unsorted()],
            "operators": [entry.__dict__ for entry in self._operators.values()],
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(document, indent=1))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        self._stamp = None
        self._load()

    def entries_unsorted(self) -> list[KeyEntry]:
        return list(self._entries.values())

    def add(self, device_id: str) -> str:
        """Creates a key for `device_id` and returns it (the only time it is ever shown). A device id that no
        reading could carry (the contracts' `^[A-Za-z0-9_-]{1,64}$`) is a ValueError: its key could never be used."""
        if DEVICE_ID.fullmatch(device_id) is None:
            raise ValueError(f"device id {device_id!r} must be 1 to 64 letters, digits, '_' or '-'")
        self._load()
        held = [e for e in self._entries.values() if e.device_id == device_id]
        if len(held) >= MAX_KEYS_PER_DEVICE:
            raise ValueError(
                f"{device_id} already holds {MAX_KEYS_PER_DEVICE} keys; revoke one first (tidegate keys revoke)"
            )
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32).replace("_", "-")
        key = f"{PREFIX}{key_id}_{secret}"
        self._entries[key_id] = KeyEntry(key_id, device_id, _digest(secret), time.time(), mosquitto_hash(key))
        self._save()
        return key

    def revoke(self, target: str) -> list[KeyEntry]:
        """Revokes a key (by the key itself or its id) or every key of a device id; returns what was revoked."""
        self._load()
        key_id = (_split(target, PREFIX) or (target, ""))[0]
        revoked = [e for e in self._entries.values() if e.key_id == key_id or e.device_id == target]
        for entry in revoked:
            del self._entries[entry.key_id]
        if revoked:
            self._save()
        return revoked

    def revoke_operator(self, target: str) -> OperatorEntry | None:
        """Revokes an operator key (by the key itself or its id); returns it, or None when nothing matched."""
        self._load()
        key_id = (_split(target, OPERATOR_PREFIX) or (target, ""))[0]
        revoked = self._operators.pop(key_id, None)
        if revoked is not None:
            self._save()
        return revoked


def mosquitto_hash(password: str, *, iterations: int = 101) -> str:
    """`password` as mosquitto 2's password file stores it (`mosquitto_passwd`): `$7$<iterations>$<salt>$<hash>`,
    PBKDF2-HMAC-SHA512 over a 12-byte random salt, both base64."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def mqtt_username(entry: KeyEntry) -> str:
    """The MQTT username of a key: `tg_<key id>`, the start of the key itself (a device holds two keys while it
    rotates, and a username is one password in mosquitto's file)."""
    return f"{PREFIX}{entry.key_id}"


def presented_key(device_token: str | None, authorization: str | None, api_key: str | None = None) -> str | None:
    """The key from `X-Device-Token`, `X-API-Key` (seed 001's header) or `Authorization: Bearer`."""
    if device_token:
        return device_token.strip()
    if api_key and api_key.strip():
        return api_key.strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None
