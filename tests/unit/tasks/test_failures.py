"""Failures are stored as a code and its parameters; the words come from the catalogue when
shown (bot/tasks/failures.py, bot/text/locales/en/tasks.po). Rows from before keep their prose."""

from __future__ import annotations

from dataclasses import replace

from bot.kling.errors import KlingNetworkError, KlingPolicyError
from bot.tasks import failures
from bot.tasks.failures import (
    Failure,
    describe_delivery_error,
    describe_failure,
    kling_gave_up,
    kling_refused,
)
from bot.tasks.models import EventType, TaskState
from bot.text import catalogue_keys
from kling_sim.simulator import FAILURE_MESSAGE, KlingSimulator
from testing.settings import settings_for
from testing.tracker_harness import harness


def _codes() -> list[str]:
    return [
        value
        for name, value in vars(failures).items()
        if name.isupper() and isinstance(value, str) and not value.startswith("failure.")
    ]


def test_every_failure_code_has_english_words() -> None:
    keys = catalogue_keys("en")
    codes = _codes()
    assert len(codes) >= 25
    assert [code for code in codes if f"failure.{code}" not in keys] == []
    sentences = [failures.DIRECT_MESSAGE_SENT, failures.DIRECT_MESSAGE_REFUSED]
    assert all(key in keys for key in [*sentences, failures.DIRECT_MESSAGE_FAILED])


async def test_a_task_failed_at_kling_stores_the_code_and_klings_words(
    simulator: KlingSimulator,
) -> None:
    simulator.config.faults.task_failure_rate = 1.0
    async with harness(settings_for(simulator)) as h:
        record = await h.submit()
        await h.wait_until(lambda: h.outcomes(EventType.FAILED) == [record.id])
        failed = await h.wait_for_state(record.id, {TaskState.DELIVERED})
        assert failed.failure_reason is None  # no sentence in the row
        assert failed.failure_code == failures.KLING_FAILED
        assert failed.failure_params == {"message": FAILURE_MESSAGE}
        assert describe_failure(failed) == f"Kling could not make it: {FAILURE_MESSAGE}"


async def test_an_undeliverable_task_stores_the_code_of_why(simulator: KlingSimulator) -> None:
    async with harness(settings_for(simulator), deliver=False) as h:
        record = await h.submit()
        await h.wait_until(lambda: h.outcomes(EventType.COMPLETED) == [record.id])
        reason = {"error": "403 Forbidden (error code: 50013)"}
        assert await h.core.mark_undeliverable(record.id, failures.DISCORD_REFUSED, reason)
        ended = await h.store.get(record.id)
        assert ended is not None and ended.state is TaskState.UNDELIVERABLE
        assert ended.delivery_error is None
        assert (ended.delivery_error_code, ended.delivery_error_params) == (
            failures.DISCORD_REFUSED,
            reason,
        )
        assert describe_delivery_error(ended) == (
            "Discord refused the post: 403 Forbidden (error code: 50013)"
        )


async def test_rows_from_before_the_codes_are_shown_as_they_were(
    simulator: KlingSimulator,
) -> None:
    async with harness(settings_for(simulator), deliver=False) as h:
        record = await h.submit()
        await h.wait_until(lambda: h.outcomes(EventType.COMPLETED) == [record.id])
        stored = await h.store.get(record.id)
        assert stored is not None
    old = replace(stored, failure_reason="Kling could not make it: old words", failure_code=None)
    assert describe_failure(old) == "Kling could not make it: old words"
    old = replace(stored, delivery_error="channel 5: gone", delivery_error_code=None)
    assert describe_delivery_error(old) == "channel 5: gone"
    assert describe_failure(stored) is None and describe_delivery_error(stored) is None


def test_klings_refusals_keep_klings_own_message_as_a_parameter() -> None:
    refusal = kling_refused(KlingPolicyError("prompt contains banned words", code=1301))
    assert refusal == Failure(
        failures.KLING_REFUSED,
        {"error_key": "kling.error.policy", "message": "prompt contains banned words"},
    )
    assert refusal.words() == (
        f"{KlingPolicyError.user_message} (Kling: prompt contains banned words)"
    )
    given_up = kling_gave_up(KlingNetworkError("timeout"), tries=4)
    assert given_up.params == {"error_clause": "kling.error.network", "tries": 4}
    assert given_up.words() == (
        "The bot could not reach Kling, even after 4 tries. Kling has no record of the task, "
        "so no credits were used: please try again later."
    )


def test_durations_and_nested_sentences_are_filled_in_when_shown() -> None:
    timeout = Failure(failures.KLING_TIMEOUT, {"seconds": 7200.0})
    assert timeout.words() == "Kling did not finish within 2 hours."
    assert Failure(failures.KLING_TIMEOUT, {"seconds": 600}).words() == (
        "Kling did not finish within 10 minutes."
    )
    gone = Failure(
        failures.CHANNEL_FORBIDDEN,
        {"channel_id": 5, "direct_message_key": failures.DIRECT_MESSAGE_FAILED, "status": 500},
    )
    assert gone.words() == (
        "channel 5: I am not allowed to post there (missing permissions); "
        "the direct message failed too (500)"
    )
