"""What a server is allowed to do: address, key, limits. Checked once, before anything listens."""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, replace

LOOPBACK_NAMES = ("localhost",)


class ServeConfigError(ValueError):
    """A server setting that cannot work or is unsafe (the message says which and what to do)."""


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: only this machine can connect."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_api_key() -> str:
    """A random key (192 bits) for a server started without one."""
    return "ryz-" + secrets.token_urlsafe(24)


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"         # bound to this machine unless told otherwise
    port: int = 8000                # 0: any free port (the handle says which)
    api_key: str | None = None      # None with auth on: a fresh key is generated (and printed by the CLI)
    auth: bool = True               # False (--no-auth) is allowed on a loopback host only
    max_body_bytes: int = 1 << 20   # request bodies above this get 413
    max_tokens_limit: int = 4096    # the largest max_tokens a request may ask for
    default_max_tokens: int = 256   # max_tokens when a request gives none (capped by the context)
    max_n: int = 8                  # completions per prompt (n)
    max_prompts: int = 16           # prompts in one /v1/completions request
    max_batch: int = 16             # streams decoded together per model
    max_queue: int = 256            # requests waiting per model before 429

    def resolved(self) -> "ServeSettings":
        """Checked, with a generated key where auth is on and none was given."""
        if not isinstance(self.host, str) or not self.host.strip():
            raise ServeConfigError(f"host must be a host name or an IP address, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ServeConfigError(f"port must be an integer in 0..65535 (0: any free port), got {self.port!r}")
        for key in ("max_body_bytes", "max_tokens_limit", "default_max_tokens", "max_n", "max_prompts",
                    "max_batch", "max_queue"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ServeConfigError(f"{key} must be a positive integer, got {v!r}")
        if not self.auth:
            if not is_loopback(self.host):
                raise ServeConfigError(f"--no-auth is only allowed on 127.0.0.1 (this machine); the server would "
                                       f"listen on {self.host} where anyone who can reach it could use the models. "
                                       "Keep the API key (the default), or bind to 127.0.0.1")
            return replace(self, api_key=None)
        key = self.api_key
        if key is None:
            key = new_api_key()
        if not isinstance(key, str) or len(key) < 8 or any(c.isspace() for c in key):
            raise ServeConfigError("the API key must be at least 8 characters with no spaces "
                                   "(leave it out to get a generated one)")
        return replace(self, api_key=key)
