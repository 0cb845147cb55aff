"""Writer schemas of the subject, fetched from the registry once per schema id and kept.

Schema ids are immutable in a registry, so a cached schema never goes stale: when the registry is
briefly unreachable the sink keeps decoding every record whose id it has seen before.
"""

from __future__ import annotations

import logging

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from tx_platform.contract import registry_client

log = logging.getLogger(__name__)


class WriterSchemas:
    """Schema id -> schema text for every version of ``subject`` (refreshed per micro-batch)."""

    def __init__(self, url: str, subject: str, client: SchemaRegistryClient | None = None) -> None:
        self.url = url
        self.subject = subject
        self._client = client or registry_client(url)
        self._by_id: dict[int, str] = {}
        self._versions_seen: set[int] = set()
        self.last_refresh_failed = False

    def refresh(self) -> dict[int, str]:
        """Fetch versions not seen yet; on registry errors keep what is cached and say so."""
        try:
            versions = self._client.get_versions(self.subject)
            for version in sorted(set(versions) - self._versions_seen):
                registered = self._client.get_version(self.subject, version)
                if registered.schema_id is None or registered.schema.schema_str is None:
                    continue
                self._by_id[int(registered.schema_id)] = registered.schema.schema_str
                self._versions_seen.add(version)
            self.last_refresh_failed = False
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:  # subject not registered yet: no record can be decoded
                self.last_refresh_failed = False
            else:
                self._warn(exc)
        except Exception as exc:  # noqa: BLE001 - connection errors of the HTTP client, kept below
            self._warn(exc)
        return dict(self._by_id)

    def _warn(self, exc: Exception) -> None:
        self.last_refresh_failed = True
        log.warning(
            "schema registry at %s unavailable (%s); decoding with %d cached schemas", self.url, exc, len(self._by_id)
        )

    @property
    def cached(self) -> dict[int, str]:
        """What is cached now."""
        return dict(self._by_id)
