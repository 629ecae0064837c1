"""What the journal keeps of audiences: subscribers, topics and who follows which.

The journal keeps a subscriber as the tenant's id for it and one opaque blob (the audience
layer's encoding, `audience/subscriber.py`); a topic as its name and a count of its
subscribers kept with every change (a counter, never a scan); a subscription as a pair of
internal keys. A topic's members are read in the order of their internal keys, which is what
a broadcast's cursor stands on: `topic_members(after=k)` goes on exactly where the page
before stopped, however the topic changed between.

Both journals implement `AudienceStore` with the same semantics (tests/journal/
test_audience_store.py runs on both):

- `upsert_subscribers` creates or replaces subscribers by the tenant's id (a re-import updates)
  and adds the topics each row names, creating topics that do not exist yet; it never removes
  a subscription.
- `subscribe` / `unsubscribe` return None for a topic that does not exist; ids that name no
  subscriber are returned, not an error.
- `delete_subscriber` removes its subscriptions too; `delete_topic` removes the topic and its
  subscriptions, never the subscribers.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

#: The most rows one `upsert_subscribers` call takes (one transaction).
MAX_UPSERT_ROWS = 10_000


class SubscriberRow(NamedTuple):
    """A subscriber to store: the tenant's id for it, its encoded record, topics to add."""

    external_id: str
    data: bytes
    topics: tuple[str, ...] = ()


def merged(rows: list[SubscriberRow]) -> dict[str, SubscriberRow]:
    """The rows of one upsert by id: for an id given twice, the later record and the topics
    of both (each row's topics are added, whatever the rows around it)."""
    by_id: dict[str, SubscriberRow] = {}
    for row in rows:
        earlier = by_id.get(row.external_id)
        if earlier is not None and earlier.topics:
            row = row._replace(topics=tuple(dict.fromkeys(earlier.topics + row.topics)))
        by_id[row.external_id] = row
    return by_id


class StoredSubscriber(NamedTuple):
    """A subscriber as stored: its encoded record and the topics it follows (by name, sorted)."""

    external_id: str
    data: bytes
    topics: list[str]
    updated_at: int


class UpsertCounts(NamedTuple):
    created: int
    updated: int
    #: Subscriptions added (those the subscriber had already are not counted).
    subscribed: int


class TopicInfo(NamedTuple):
    name: str
    subscribers: int
    created_at: int


class SubscribeCounts(NamedTuple):
    added: int
    #: Subscriptions the subscribers had already.
    already: int
    #: Ids that name no subscriber of the tenant.
    unknown: list[str]


class Member(NamedTuple):
    """One subscriber of a topic: its internal key (the cursor) and its encoded record."""

    key: int
    external_id: str
    data: bytes


class AudienceStore(Protocol):
    async def upsert_subscribers(
        self, tenant: str, rows: list[SubscriberRow], now: int
    ) -> UpsertCounts:
        """Create or replace each subscriber and add its topics, all in one transaction (at
        most `MAX_UPSERT_ROWS`; for an id given twice, the later record and both rows'
        topics: `merged`)."""
        ...

    async def subscriber(self, tenant: str, external_id: str) -> StoredSubscriber | None: ...

    async def delete_subscriber(self, tenant: str, external_id: str) -> bool:
        """Remove the subscriber and its subscriptions; False when there was none."""
        ...

    async def create_topic(self, tenant: str, name: str, now: int) -> bool:
        """True when created, False when it existed."""
        ...

    async def topic(self, tenant: str, name: str) -> TopicInfo | None: ...

    async def topics(self, tenant: str, after: str | None, limit: int) -> list[TopicInfo]:
        """The tenant's topics by name, those after `after` (a page's last name)."""
        ...

    async def delete_topic(self, tenant: str, name: str) -> bool:
        """Remove the topic and its subscriptions (not the subscribers)."""
        ...

    async def subscribe(
        self, tenant: str, topic: str, external_ids: list[str], now: int
    ) -> SubscribeCounts | None:
        """Subscribe existing subscribers to an existing topic; None: no such topic."""
        ...

    async def unsubscribe(self, tenant: str, topic: str, external_ids: list[str]) -> int | None:
        """How many subscriptions were removed; None: no such topic."""
        ...

    async def topic_members(
        self, tenant: str, topic: str, after: int, limit: int
    ) -> list[Member] | None:
        """Up to `limit` members of the topic whose key is greater than `after`, by key;
        None: no such topic."""
        ...
