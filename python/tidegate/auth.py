"""Per-device API keys: random, prefixed, stored only as hashes, compared in constant time.

A key reads `tg_<key id>_<secret>`. The key id finds the entry; the secret's SHA-256 is compared with
`hmac.compare_digest`. A device holds at most two active keys, so keys rotate without downtime. The store is a
JSON file under the data dir, written atomically; servers re-read it when it changes (checked at most every
`reload_interval` seconds), so a revocation takes effect within a second without a restart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREFIX = "tg_"
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
    role: str = "device"
    """"device" (sends records as `device_id`) or "operator" (reads the archive over HTTP; `device_id` is then
    the operator's name). Neither kind of key works as the other."""


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    """The key file: read for lookups (with change detection) and written by the `tidegate keys` commands."""

    def __init__(self, path: Path, *, reload_interval: float = 0.5) -> None:
        self.path = path
        self.reload_interval = reload_interval
        self._entries: dict[str, KeyEntry] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked_at = 0.0
        self._load()

    def _load(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._entries, self._stamp = {}, None
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
                item.get("role", "device"),
            )
            for item in document.get("keys", [])
        }
        self._stamp = stamp

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_at >= self.reload_interval:
            self._checked_at = now
            self._load()

    def device_for(self, presented: str) -> str | None:
        """The device a presented key belongs to, or None for a malformed, unknown or revoked key (or an operator's
        key: it sends nothing)."""
        entry = self._entry_for(presented)
        return entry.device_id if entry is not None and entry.role == "device" else None

    def entry_for(self, presented: str) -> KeyEntry | None:
        """The entry of a presented key of either role, or None for a malformed, unknown or revoked key."""
        return self._entry_for(presented)

    def _entry_for(self, presented: str) -> KeyEntry | None:
        self.refresh()
        if not presented.startswith(PREFIX):
            return None
        key_id, _, secret = presented[len(PREFIX) :].partition("_")
        entry = self._entries.get(key_id)
        # Compare even when the id is unknown, so timing does not tell ids apart.
        expected = entry.secret_sha256 if entry is not None else _digest("")
        matches = hmac.compare_digest(_digest(secret), expected)
        return entry if entry is not None and matches and secret else None

    def entries(self) -> list[KeyEntry]:
        self._load()
        return sorted(self._entries.values(), key=lambda e: (e.device_id, e.created_at))

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        document = {"keys": [entry.__dict__ for entry in self.entries_unsorted()]}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(document, indent=1))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        self._stamp = None
        self._load()

    def entries_unsorted(self) -> list[KeyEntry]:
        return list(self._entries.values())

    def add(self, device_id: str, *, role: str = "device") -> str:
        """Creates a key for `device_id` (with `role="operator"`: for the operator of that name) and returns it (the
        only time it is ever shown). A device id that no reading could carry (the contracts'
        `^[A-Za-z0-9_-]{1,64}$`) is a ValueError: its key could never be used; operator names follow the same rule."""
        if DEVICE_ID.fullmatch(device_id) is None:
            raise ValueError(f"{role} id {device_id!r} must be 1 to 64 letters, digits, '_' or '-'")
        self._load()
        held = [e for e in self._entries.values() if e.device_id == device_id and e.role == role]
        if len(held) >= MAX_KEYS_PER_DEVICE:
            raise ValueError(
                f"{device_id} already holds {MAX_KEYS_PER_DEVICE} keys; revoke one first (tidegate keys revoke)"
            )
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32).replace("_", "-")
        key = f"{PREFIX}{key_id}_{secret}"
        # Operators never publish over MQTT: no broker password for their keys.
        mqtt_hash = mosquitto_hash(key) if role == "device" else None
        self._entries[key_id] = KeyEntry(key_id, device_id, _digest(secret), time.time(), mqtt_hash, role)
        self._save()
        return key

    def revoke(self, target: str) -> list[KeyEntry]:
        """Revokes a key (by the key itself or its id) or every key of a device id; returns what was revoked."""
        self._load()
        key_id = target[len(PREFIX) :].partition("_")[0] if target.startswith(PREFIX) else target
        revoked = [e for e in self._entries.values() if e.key_id == key_id or e.device_id == target]
        for entry in revoked:
            del self._entries[entry.key_id]
        if revoked:
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
