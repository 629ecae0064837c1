"""API keys: which tenant a ``Authorization: Bearer <key>`` header speaks for.

The configuration holds only ``sha256:<hex>`` digests of keys (see `sluice.config.hash_api_key`),
so a leaked config file leaks no key. A request's key is hashed and the digest looked up in a
dict: the lookup's timing depends on the digest, which an attacker cannot steer towards a
stored one, so it reveals nothing about stored keys (the property hmac.compare_digest gives a
single comparison).

Examples:
    >>> from sluice.config import TenantConfig, hash_api_key
    >>> keys = ApiKeys({"acme": TenantConfig(api_keys=[hash_api_key("s3cret")])})
    >>> keys.tenant_for(b"Bearer s3cret"), keys.tenant_for(b"Bearer wrong")
    ('acme', None)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from sluice.config import TenantConfig

_PREFIX = "sha256:"
#: Longest key accepted. Keys we issue are far shorter; this only bounds the hashing work.
MAX_KEY_LENGTH = 1024


class ApiKeys:
    """Maps API keys to tenants through the digests configured for each tenant."""

    __slots__ = ("_by_digest",)

    def __init__(self, tenants: Mapping[str, TenantConfig]) -> None:
        self._by_digest: dict[bytes, str] = {}
        for name, tenant in tenants.items():
            for entry in tenant.api_keys:
                if entry.startswith(_PREFIX):
                    self._by_digest[bytes.fromhex(entry[len(_PREFIX) :])] = name

    def tenant_for(self, authorization: bytes | None) -> str | None:
        """The tenant an ``Authorization`` header speaks for; None if missing, bad or unknown."""
        if authorization is None:
            return None
        scheme, _, key = authorization.partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        key = key.strip(b" \t")
        if not key or len(key) > MAX_KEY_LENGTH:
            return None
        return self._by_digest.get(hashlib.sha256(key).digest())
