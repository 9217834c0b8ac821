"""Unit tests of the Discord side's pure pieces: upload planning, duplicate detection, rules."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import discord

from bot.discord.animate import nearest_video_ratio
from bot.discord.checks import blocked_word_in
from bot.discord.delivery import Delivery
from bot.discord.embeds import footer_ref, link_fields
from bot.discord.guild_config import GenerationDefaults, GuildConfig
from bot.discord.moderation import apply_config_changes, apply_default_changes
from bot.discord.moderation_views import defaults_summary
from bot.discord.posts import plan_files
from bot.discord.status import Pacer, StatusMessages
from bot.kling.models import TaskKind
from bot.tasks.models import EventType, TaskEvent, TaskRecord, TaskState

MiB = 1024 * 1024


def task(kind: TaskKind = TaskKind.IMAGE, task_id: int = 7) -> Any:
    return SimpleNamespace(id=task_id, kind=kind)


def files(tmp_path: Path, *sizes: int, suffix: str = ".png") -> list[Path]:
    paths = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"{i}{suffix}"
        path.write_bytes(b"x" * size)
        paths.append(path)
    return paths


def test_plan_files_uploads_what_fits_and_links_the_rest(tmp_path: Path) -> None:
    paths = files(tmp_path, 4 * MiB, 12 * MiB, 4 * MiB, 4 * MiB)
    urls = [f"https://kling.example/{i}.png" for i in range(4)]
    uploads, links = plan_files(task(), paths, urls, 10 * MiB)
    # Per file: #2 is too big alone; in total: #4 would pass 10 MiB after #1 and #3.
    assert [name for name, _ in uploads] == ["kling-7-1.png", "kling-7-3.png"]
    assert links == [urls[1], urls[3]]


def test_plan_files_video_is_one_named_mp4(tmp_path: Path) -> None:
    paths = files(tmp_path, 1000, suffix=".mp4")
    uploads, links = plan_files(task(TaskKind.VIDEO), paths, ["u"], 10 * MiB)
    assert uploads == [("kling-7.mp4", paths[0])] and links == []


def test_plan_files_missing_file_falls_back_to_link(tmp_path: Path) -> None:
    uploads, links = plan_files(task(), [tmp_path / "gone.png"], ["https://k/0.png"], 10 * MiB)
    assert uploads == [] and links == ["https://k/0.png"]


class _History:
    def __init__(self, messages: list[Any]) -> None:
        self.messages = messages

    def history(self, limit: int) -> Any:
        async def gen() -> Any:
            for m in self.messages[:limit]:
                yield m

        return gen()


def _message(author_id: int, footer: str | None) -> Any:
    embed = discord.Embed(title="x")
    if footer is not None:
        embed.set_footer(text=footer)
    return SimpleNamespace(author=SimpleNamespace(id=author_id), embeds=[embed])


async def test_already_posted_finds_only_our_own_post_of_that_task() -> None:
    bot = SimpleNamespace(user=SimpleNamespace(id=1))
    delivery = Delivery(bot)  # type: ignore[arg-type]
    t = task(task_id=12)
    others = [
        _message(2, footer_ref(12)),  # someone else quoting the footer
        _message(1, footer_ref(120)),  # #120 is not #12
        _message(1, None),
    ]
    assert not await delivery._already_posted(_History(others), t)  # type: ignore[arg-type]
    ours = [*others, _message(1, footer_ref(12) + " · Simulated — no Kling credits used")]
    assert await delivery._already_posted(_History(ours), t)  # type: ignore[arg-type]


def test_blocked_words_are_whole_words_any_case() -> None:
    config = GuildConfig(blocked_words=["cat", "hot dog"])
    assert blocked_word_in(config, "A CAT on a mat") == "cat"
    assert blocked_word_in(config, "concatenate things") is None
    assert blocked_word_in(config, None, "no Hot Dog please") == "hot dog"


def test_config_changes_round_trip() -> None:
    config = GuildConfig.from_dict({})
    changed = apply_config_changes(
        config,
        allow_channel=5,
        disallow_channel=None,
        max_active=0,
        daily_limit=None,
        block_word=" Dragon ",
        unblock_word=None,
        moderator_role=9,
        clear_moderator_role=False,
    )
    assert len(changed) == 4
    again = GuildConfig.from_dict(config.to_dict())
    assert again.allowed_channels == [5] and again.max_active == 0
    assert again.blocked_words == ["dragon"] and again.moderator_role_id == 9


def test_server_wide_limits_apply_until_a_guild_sets_its_own() -> None:
    defaults = {"max_active": 7, "daily_limit": 0}
    fresh = GuildConfig.from_dict({}, **defaults)
    assert (fresh.max_active, fresh.daily_limit) == (7, 0)
    own = GuildConfig.from_dict({"max_active": 2}, **defaults)
    assert (own.max_active, own.daily_limit) == (2, 0)


def test_guild_defaults_round_trip_and_resolve_in_order() -> None:
    config = GuildConfig.from_dict({})
    changed = apply_default_changes(
        config.defaults, image_model="kling-v2-1", image_count=4, video_duration="10"
    )
    assert len(changed) == 3
    defaults = GuildConfig.from_dict(config.to_dict()).defaults
    assert (defaults.image_model, defaults.image_count) == ("kling-v2-1", 4)
    # The member's option wins, then the guild's default, then the server's, then Kling's.
    image = defaults.image_options(count=None, aspect_ratio="1:1", model=None, server_model="x")
    assert image == {"n": 4, "aspect_ratio": "1:1", "model_name": "kling-v2-1"}
    video = defaults.video_options(mode=None, duration=None, aspect_ratio=None)
    assert video == {
        "mode": "std",
        "duration": "10",
        "aspect_ratio": "16:9",
        "model_name": "kling-v1-6",
    }
    plain = GenerationDefaults().image_options(
        count=None, aspect_ratio=None, model=None, server_model="kling-v2-1"
    )
    assert plain == {"n": 1, "aspect_ratio": "16:9", "model_name": "kling-v2-1"}
    assert "video duration (s): **10**\n" in defaults_summary(defaults, None) + "\n"

    assert apply_default_changes(defaults, clear=True) == ["defaults cleared"]
    assert defaults == GenerationDefaults()


def test_stored_defaults_kling_no_longer_takes_are_ignored() -> None:
    # A retired model or a hand-edited row must not make every command fail at Kling.
    raw = {"defaults": {"image_model": "kling-v0", "image_count": 12, "video_mode": "pro"}}
    defaults = GuildConfig.from_dict(raw).defaults
    assert (defaults.image_model, defaults.image_count, defaults.video_mode) == (None, None, "pro")


def test_animate_picks_the_closest_video_shape() -> None:
    assert nearest_video_ratio("16:9") == "16:9"
    assert nearest_video_ratio("21:9") == "16:9"
    assert nearest_video_ratio("3:4") == "9:16"
    assert nearest_video_ratio("2:3") == "9:16"
    assert nearest_video_ratio(None) == "16:9"


def record(**overrides: Any) -> TaskRecord:
    now = time.time()
    fields: dict[str, Any] = dict(
        id=3, kind=TaskKind.IMAGE, provider="simulator", simulated=True,
        external_task_id="kb-x", kling_task_id=None, state=TaskState.QUEUED,
        params={"prompt": "p", "n": 1}, input_files=[], input_labels=["subject1"], slots=1,
        guild_id=1, channel_id=2, user_id=4, message_id=None, created_at=now,
        submitted_at=None, processing_at=None, finished_at=None, delivered_at=None,
        kling_status=None, result_urls=[], result_files=[], credits=None, failure_reason=None,
        delivery_attempts=0, delivery_error=None, cancel_requested=False, callback_token=None,
        next_check_at=None, check_count=0, submit_attempts=0, not_before=None, updated_at=now,
    )  # fmt: skip
    fields.update(overrides)
    return TaskRecord(**fields)


class _Interaction:
    locale = discord.Locale.american_english

    def __init__(self, age: float) -> None:
        self.created_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age)
        self.edits: list[discord.Embed] = []

    async def edit_original_response(self, **kwargs: Any) -> Any:
        self.edits.append(kwargs["embed"])
        return SimpleNamespace(id=555)  # the status message


def _status_bot() -> Any:
    async def get(task_id: int) -> None:
        return None

    stored: dict[int, int] = {}

    async def set_status_message(task_id: int, message_id: int) -> None:
        stored[task_id] = message_id

    tracker = SimpleNamespace(
        tasks=SimpleNamespace(get=get),
        queue_position=lambda _: None,
        set_status_message=set_status_message,
        stored_status_messages=stored,
    )
    return SimpleNamespace(tracker=tracker)


async def test_status_edits_are_rate_limited_and_show_the_latest_state() -> None:
    bot = _status_bot()
    status = StatusMessages(bot)
    status.interval = 0.2
    interaction = _Interaction(age=1)
    await status.follow(record(), interaction)  # type: ignore[arg-type]
    # Stored at the first edit: any process can edit it from now on, by its ids.
    assert bot.tracker.stored_status_messages == {record().id: 555}
    for state in (TaskState.SUBMITTED, TaskState.PROCESSING, TaskState.PROCESSING):
        await status.on_event(TaskEvent(EventType.STATE, record(state=state)))
    assert len(interaction.edits) == 1  # the burst waits for the interval
    await asyncio.sleep(0.35)
    assert len(interaction.edits) == 2
    assert "generating" in (interaction.edits[-1].title or "")
    await status.close()


async def test_status_is_never_edited_after_the_token_window() -> None:
    status = StatusMessages(_status_bot())
    interaction = _Interaction(age=14 * 60 + 5)  # the token has under a minute left
    await status.follow(record(), interaction)  # type: ignore[arg-type]
    await status.on_event(TaskEvent(EventType.STATE, record(state=TaskState.SUBMITTED)))
    assert interaction.edits == []
    status.interval = 0.0
    await status.on_event(TaskEvent(EventType.STATE, record(state=TaskState.PROCESSING)))
    await asyncio.sleep(0.05)
    assert interaction.edits == []  # forgotten: no later change edits it either
    await status.close()


class _EditLog:
    """When each edit starts and how many are in flight at once, across interactions."""

    def __init__(self, expected: int) -> None:
        self.starts: list[float] = []
        self.in_flight = self.most_in_flight = 0
        self.expected = expected
        self.all_started = asyncio.Event()


class _SlowInteraction(_Interaction):
    def __init__(self, log: _EditLog) -> None:
        super().__init__(age=1)
        self.log = log

    async def edit_original_response(self, **kwargs: Any) -> Any:
        log = self.log
        log.starts.append(time.monotonic())
        if len(log.starts) == log.expected:
            log.all_started.set()
        log.in_flight += 1
        log.most_in_flight = max(log.most_in_flight, log.in_flight)
        try:
            await asyncio.sleep(0.02)
            return await super().edit_original_response(**kwargs)
        finally:
            log.in_flight -= 1


async def test_a_burst_of_status_changes_is_paced_and_each_message_edited_once() -> None:
    """A poll cycle can move thousands of tasks at once: their edits must not all go out
    together (they would crowd out replies to new commands), and each shows the newest state."""
    status = StatusMessages(_status_bot())
    status.interval = 0.0
    rate, at_once, tasks = 200.0, 3, 40
    status.pacer = Pacer(rate, at_once)
    follows = _EditLog(expected=tasks)
    interactions = {task_id: _SlowInteraction(follows) for task_id in range(1, tasks + 1)}
    for task_id, interaction in interactions.items():
        await status.follow(record(id=task_id), interaction)  # type: ignore[arg-type]
    paced = _EditLog(expected=tasks)
    for task_id, interaction in interactions.items():  # two changes per task, in one burst
        interaction.log = paced
        for state in (TaskState.SUBMITTED, TaskState.PROCESSING):
            await status.on_event(TaskEvent(EventType.STATE, record(id=task_id, state=state)))
    await asyncio.wait_for(paced.all_started.wait(), 10)
    await asyncio.sleep(0.1)  # nothing more may follow
    assert len(paced.starts) == tasks  # one paced edit per task, showing its newest state
    assert paced.most_in_flight <= at_once
    assert paced.starts[-1] - paced.starts[0] >= (tasks - 1) / rate * 0.99
    for interaction in interactions.values():
        assert len(interaction.edits) == 2
        assert "generating" in (interaction.edits[-1].title or "")
    await status.close()


def test_many_links_are_never_cut_inside_a_link() -> None:
    links = [f"[file {i}](https://cdn.example.com/{'x' * 100}/{i}.png)" for i in range(1, 10)]
    values = link_fields(links, note="Kling deletes these files after 30 days.")
    assert len(values) > 1
    assert all(len(value) <= 1024 for value in values)
    joined = "\n".join(values)
    for link in links:
        assert joined.count(link) == 1
    assert values[-1].endswith("after 30 days.")
