"""Credentials out of anything shown: URLs with `user:password@` or a `?token=` query.

Operators paste Redis, AMQP and API URLs that carry passwords (`redis://:pw@host`,
`amqp://guest:pw@host`); `inboxpilot config`, log lines, error messages and `/readyz`
show URLs, so each passes through here. Imports nothing heavy: the CLI uses it
before anything else is loaded.
"""

from __future__ import annotations

import re

MASK = "***"
# Query parameters that carry a credential by convention (lower case).
SECRET_PARAMS = (
    "token", "access_token", "api_token", "api_key", "apikey", "key", "password", "passwd",
    "pwd", "secret", "client_secret", "auth", "signature", "sig", "x-amz-signature",
)  # fmt: skip
# scheme://[user]:password@ -- the password is everything up to the last '@' of the authority.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s/@:'\"]*):([^\s/'\"]*)@")
# scheme://user@ with no password still names an account; only the password is a secret.
_QUERY = re.compile(r"(?i)([?&;](?:" + "|".join(re.escape(p) for p in SECRET_PARAMS) + r")=)[^&#\s'\"]*")


def mask_url(text: str) -> str:
    """`text` with every URL password and credential query value replaced by `***`.

    Works on a bare URL or on free text that contains URLs (a log line, an error).
    """
    if not text:
        return text
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{m.group(2)}:{MASK}@", text)
    return _QUERY.sub(rf"\g<1>{MASK}", text)


def has_credentials(url: str) -> bool:
    """True when `url` carries a password or a credential query parameter."""
    return mask_url(url) != url


def url_secrets(url: str) -> list[str]:
    """The password and credential query values of `url`, to scrub wherever they appear alone."""
    from urllib.parse import parse_qsl, urlsplit

    try:
        parts = urlsplit(url)
        found = [parts.password or ""]
    except ValueError:
        return []
    found += [v for k, v in parse_qsl(parts.query) if k.lower() in SECRET_PARAMS]
    return [value for value in found if value]
