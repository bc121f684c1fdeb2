"""Conditions over message content (the worker fetches messages only when one is used)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, PrivateAttr, field_validator, model_validator

from worker.rules.conditions.base import CONDITIONS, Condition, as_list, listing
from worker.rules.context import EvalContext
from worker.rules.regex import UserRegex, regex_compiles


@CONDITIONS.register("message_text")
class MessageTextCondition(Condition):
    """The customer's last inbound message contains a keyword or matches a regex."""

    key = "message_text"
    shorthand = "keywords"
    needs_messages = True
    keywords: list[str] | None = Field(default=None, min_length=1, description="Any of these words")
    regex: str | None = None
    case_sensitive: bool = False
    # Keywords are escaped literals (no nested repetition, so no runaway backtracking) and keep
    # Python's Unicode word boundaries; the author's regex runs on RE2 (worker/rules/regex.py).
    _keywords: re.Pattern[str] | None = PrivateAttr(default=None)
    _regex: UserRegex | None = PrivateAttr(default=None)

    _as_list = field_validator("keywords", mode="before")(as_list)

    _regex_ok = field_validator("regex")(regex_compiles)

    @model_validator(mode="after")
    def _some(self) -> MessageTextCondition:
        if self.keywords is None and self.regex is None:
            raise ValueError("give 'keywords' or 'regex'")
        return self

    def model_post_init(self, _: Any) -> None:
        if self.keywords:
            flags = 0 if self.case_sensitive else re.IGNORECASE
            self._keywords = re.compile("|".join(rf"\b{re.escape(k)}\b" for k in self.keywords), flags)
        if self.regex is not None:
            self._regex = UserRegex(self.regex, case_sensitive=self.case_sensitive)

    def label(self) -> str:
        bits = []
        if self.keywords:
            bits.append(f"mentions {listing(self.keywords)}")
        if self.regex is not None:
            bits.append(f"matches /{self.regex}/")
        return "last customer message " + " or ".join(bits)

    def seen(self, ctx: EvalContext) -> object:
        if ctx.messages is None:
            return "messages not loaded"
        last = ctx.last_inbound_message()
        return None if last is None else (last.message_text or "")[:80]

    def test(self, ctx: EvalContext) -> bool:
        last = ctx.last_inbound_message()
        if last is None or not last.message_text:
            return False
        text = last.message_text
        if self._keywords is not None and self._keywords.search(text) is not None:
            return True
        return self._regex is not None and self._regex.search(text)
