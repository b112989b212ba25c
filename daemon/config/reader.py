"""Typed, validated reading of config.toml keys, for daemon/config/model.py and the modules that read its sections.

It depends on no other config module, so every section reader can import it without a cycle.
"""
from __future__ import annotations

import ipaddress
import os
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from emergencyd.escalation.settings import HostPort, Secret

E = TypeVar("E", bound=StrEnum)

__all__ = ["ConfigError", "ConfigReader", "HostPort", "Secret", "is_loopback", "read_networks"]


class ConfigError(ValueError):
    """A config problem, phrased for the operator: which key, what is wrong."""


class ConfigReader:
    """Typed access to the parsed TOML by dotted key, with operator-facing errors."""

    def __init__(self, data: dict[str, Any], *, base_dir: Path, environ: dict[str, str],
                 lenient_secrets: bool = False):
        self._data = data
        self._base_dir = base_dir
        self._environ = environ
        # The on-call's commands (status, show, retry...) run while the service, and with it its systemd
        # credentials, may be gone: a credential file they cannot read is then taken as absent.
        self._lenient_secrets = lenient_secrets
        self._read: set[str] = set()     # every key asked for, present or not

    @property
    def lenient_secrets(self) -> bool:
        return self._lenient_secrets

    def unread_keys(self, *, checked_elsewhere: frozenset[str]) -> list[str]:
        """The keys in the file that no section reader asked for: typos, whose values would silently not count.
        Derived from what was read, so a new setting is known the moment it is read."""
        return [key for key in self._unread("", self._data) if key.split(".")[0] not in checked_elsewhere]

    def _unread(self, prefix: str, table: dict[str, Any]) -> list[str]:
        """A table some of whose keys were read is looked into ([imap.oauth2] within [imap]); else it is unread."""
        unread = []
        for name, value in table.items():
            key = prefix + name
            if key in self._read:
                continue
            if isinstance(value, dict) and any(read.startswith(key + ".") for read in self._read):
                unread += self._unread(key + ".", value)
            else:
                unread.append(key)
        return unread

    def _get(self, key: str, default: Any) -> Any:
        self._read.add(key)
        node: Any = self._data
        for part in key.split("."):
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: its parent is not a table")
            if part not in node:
                return default
            node = node[part]
        return node

    def choice(self, key: str, kind: type[E], default: str, allowed: tuple[E, ...] | None = None) -> E:
        """One of an enum's values (or of `allowed`), named in the error when it is not."""
        name = self.string(key, default)
        options = allowed or tuple(kind)
        if name not in {option.value for option in options}:
            raise ConfigError(f"{key}: expected one of {', '.join(options)}, got {name!r}")
        return kind(name)

    def string(self, key: str, default: str) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value

    def integer(self, key: str, default: int, *, minimum: int) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if value < minimum:
            raise ConfigError(f"{key}: must be at least {minimum}, got {value}")
        return value

    def number(self, key: str, default: float, *, minimum: float) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if value < minimum:
            raise ConfigError(f"{key}: must be at least {minimum}, got {value}")
        return float(value)

    def string_list(self, key: str, default: list[str]) -> list[str]:
        value = self._get(key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings")
        return value

    def host_port(self, key: str, default: str) -> HostPort:
        value = self.string(key, default)
        host, sep, port = value.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"{key}: expected HOST:PORT, got {value!r}")
        return HostPort(host, int(port))

    def https_url(self, key: str, default: str) -> str:
        value = self.string(key, default).rstrip("/")
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ConfigError(f"{key}: expected an https:// URL, got {value!r}")
        return value

    def path(self, key: str, default: str) -> Path:
        return self._resolve(self.string(key, default))

    def optional_path(self, key: str) -> Path | None:
        value = self._get(key, None)
        if value is None:
            return None
        path = self._resolve(self.string(key, ""))
        if not path.is_file():
            raise ConfigError(f"{key}: {path} is not a readable file")
        return path

    def secret(self, file_key: str, env_name: str) -> Secret | None:
        """The environment wins over the file, so an operator can override a credential file."""
        self._read.add(file_key)        # a known key, even when the environment makes it unused
        env_value = self._environ.get(env_name, "").strip()
        if env_value:
            return Secret(env_value)
        if self._lenient_secrets:
            try:
                path = self.optional_path(file_key)
            except ConfigError:
                return None
        else:
            path = self.optional_path(file_key)
        if path is None:
            return None
        try:
            value = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            if self._lenient_secrets:
                return None
            raise ConfigError(f"{file_key}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
        if not value:
            if self._lenient_secrets:
                return None
            raise ConfigError(f"{file_key}: {path} is empty")
        return Secret(value)

    def _resolve(self, value: str) -> Path:
        expanded = Path(os.path.expandvars(value)).expanduser()
        return expanded if expanded.is_absolute() else self._base_dir / expanded


def read_networks(r: ConfigReader, key: str, default: list[str]) -> tuple[str, ...]:
    """A list of addresses or networks (host bits allowed), as written."""
    values = r.string_list(key, default)
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ConfigError(f"{key}: {value!r} is not an address or network") from None
    return tuple(values)


def is_loopback(host: str) -> bool:
    """An address on this machine: a name that merely starts with "127." is not one."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
