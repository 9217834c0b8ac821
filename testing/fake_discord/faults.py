"""Injected failures: the next requests matching a rule answer with an error (429s shaped the
way discord.py retries them), before or after the request was carried out."""

from __future__ import annotations

import re
import time
from typing import Any

from aiohttp import web

from testing.fake_discord.http import json_response
from testing.fake_discord.models import FaultRule, Recorded
from testing.fake_discord.state import FakeState


class Faults(FakeState):
    """Answers matching requests with errors, as Discord sometimes does."""

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int,
        *,
        code: int = 0,
        message: str | None = None,
        count: int = 1,
        retry_after: float = 0.05,
        is_global: bool = False,
        after_handling: bool = False,
    ) -> FaultRule:
        """Answer the next ``count`` requests whose API-relative path full-matches.

        ``after_handling``: carry the request out first (a message is stored), then answer with
        the error anyway, like a Discord whose answer is lost after it did the work.
        """
        default_messages = {
            429: "You are being rate limited.",
            500: "500: Internal Server Error",
            502: "502: Bad Gateway",
            403: "Missing Permissions",
            404: "404: Not Found",
        }
        rule = FaultRule(
            method.upper(),
            re.compile(path_regex),
            status,
            code,
            message or default_messages.get(status, f"{status}: Error"),
            count,
            retry_after,
            is_global,
            after_handling,
        )
        self.faults.append(rule)
        return rule

    def _match_fault(self, rec: Recorded, *, after: bool = False) -> web.Response | None:
        for rule in self.faults:
            if rule.remaining <= 0 or rule.after_handling is not after:
                continue
            if rule.method not in ("*", rec.method) or not rule.pattern.fullmatch(rec.path):
                continue
            rule.remaining -= 1
            rule.hits.append(rec)
            body: dict[str, Any] = {"message": rule.message, "code": rule.code}
            headers: dict[str, str] = {}
            if rule.status == 429:
                body.update(retry_after=rule.retry_after, **{"global": rule.is_global})
                headers = {
                    "Retry-After": str(max(1, round(rule.retry_after))),
                    "X-RateLimit-Limit": "5",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": f"{time.time() + rule.retry_after:.3f}",
                    "X-RateLimit-Reset-After": f"{rule.retry_after:.3f}",
                    "X-RateLimit-Bucket": "fakebucket"
                    + str(abs(hash(rule.pattern.pattern)) % 10**8),
                    "X-RateLimit-Scope": "global" if rule.is_global else "user",
                    "Via": "1.1 google",
                }
                if rule.is_global:
                    headers["X-RateLimit-Global"] = "true"
            rec.status, rec.response = rule.status, body
            return json_response(rule.status, body, headers)
        return None
