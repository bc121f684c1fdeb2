"""OwnWrites keeps each conversation's newest MAX_KEPT messages, in order, for TTL_S."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import redis

from worker.api.models import Conversation, Message
from worker.state.own_writes import KEY_PREFIX, MAX_KEPT, TTL_S, OwnWrites, message_state

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def sent(conversation_id: int, n: int) -> tuple[Conversation, Message]:
    at = T0 + timedelta(seconds=n)
    before = Conversation(id=conversation_id, channel="sms", last_inbound_at=T0, last_message_at=at)
    message = Message(_id=f"m{n}", conversation_id=conversation_id, direction="outbound", created_at=at)
    return before, message


def test_one_record_call_keeps_the_newest_per_conversation_in_order(redis_client: redis.Redis) -> None:
    writes = OwnWrites(redis_client)
    writes.record([sent(1, n) for n in range(MAX_KEPT + 3)] + [sent(2, 100)])
    writes.record([sent(2, 101)])

    found = writes.read([1, 2, 3])
    assert [w.message.id for w in found[1]] == [f"m{n}" for n in range(3, MAX_KEPT + 3)]
    assert [w.message.id for w in found[2]] == ["m100", "m101"]
    assert 3 not in found
    assert found[2][0].before == message_state(sent(2, 100)[0])
    assert 0 < int(redis_client.ttl(KEY_PREFIX + "1")) <= TTL_S
