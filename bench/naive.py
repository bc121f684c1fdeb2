"""The naive poller we measure ourselves against: a cron-style script.

Every tick it pages through every conversation (`$limit` 50, `$skip`, in the
index's `(updated_at, id)` order so the simulator's cost stays O(page) and is not
what is measured), and it acts with one API call per conversation per action.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from bench.common import PAGE
from worker.api.services import SEND_PATHS


class NaivePoller:
    def __init__(self, client: httpx.Client, organization_id: int = 1) -> None:
        self.client = client
        self.organization_id = organization_id

    def tick(self) -> list[dict[str, Any]]:
        """Every conversation, a page of 50 at a time, until `total` says there are no more."""
        records: list[dict[str, Any]] = []
        skip = 0
        while True:
            params = {
                "organization_id": self.organization_id,
                "$sort[updated_at]": 1,
                "$sort[id]": 1,
                "$limit": PAGE,
                "$skip": skip,
            }
            response = self.client.get("/conversations", params=params)
            response.raise_for_status()
            page = response.json()
            records.extend(page["data"])
            skip += len(page["data"])
            if not page["data"] or skip >= page["total"]:
                return records

    def act(self, conversation_ids: Iterable[int], changes: Mapping[str, Any]) -> int:
        """One PATCH per conversation: how a script without bulk actions applies a change."""
        calls = 0
        for conversation_id in conversation_ids:
            body = {**changes, "organization_id": self.organization_id}
            self.client.patch(f"/conversations/{conversation_id}", json=body).raise_for_status()
            calls += 1
        return calls

    def send(self, conversation: Mapping[str, Any], text: str, message_type: str = "text") -> None:
        """One POST to the conversation's channel endpoint (a reply, or a note with "note")."""
        body: dict[str, Any] = {
            "conversation_id": conversation["id"],
            "message_text": text,
            "message_type": message_type,
        }
        if conversation["channel"] == "playground":  # the playground also asks who and where
            body |= {"organization_id": self.organization_id, "contact_id": conversation["contact_id"]}
        self.client.post(SEND_PATHS[conversation["channel"]], json=body).raise_for_status()

    def contacts(self, contact_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """Contacts by `id[$in]`, 50 a find (what a script reads to put a name in a message)."""
        wanted = sorted(set(contact_ids))
        out: dict[int, dict[str, Any]] = {}
        for start in range(0, len(wanted), PAGE):
            params: dict[str, Any] = {"id[$in][]": wanted[start : start + PAGE], "$limit": PAGE}
            response = self.client.get("/contacts", params=params)
            response.raise_for_status()
            out |= {int(record["id"]): record for record in response.json()["data"]}
        return out
