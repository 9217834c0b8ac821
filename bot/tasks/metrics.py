"""A tiny Prometheus text exposition (format 0.0.4) for the task core, without a client library.

Counters and summaries live in memory (they restart at zero with the process, as Prometheus
expects); gauges such as tasks per state are read from the store when ``/metrics`` is scraped
(from counters the store keeps, so a scrape costs the same however many tasks are kept).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LabelSet = tuple[tuple[str, str], ...]


def _labels(labels: LabelSet) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{name}="{_escape(value)}"' for name, value in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Summary:
    """Count and sum, plus quantiles over the most recent observations (a sliding window)."""

    QUANTILES = (0.5, 0.9, 0.99)

    def __init__(self, window: int = 500) -> None:
        self.count = 0
        self.total = 0.0
        self._recent: deque[float] = deque(maxlen=window)

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        self._recent.append(value)

    def quantile(self, q: float) -> float | None:
        if not self._recent:
            return None
        ordered = sorted(self._recent)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Metrics:
    """The task core's counters. Every method is cheap and synchronous."""

    def __init__(self) -> None:
        self.kling_calls: Counter[tuple[str, str]] = Counter()  # (endpoint, code)
        self.callbacks: Counter[tuple[str, str]] = Counter()  # (result, reason)
        self.polls: Counter[tuple[str, str]] = Counter()  # (kind, method)
        self.download_seconds = Summary()
        self.delivery_seconds = Summary()

    def kling_call(self, endpoint: str, code: int | None) -> None:
        """Hook for ``KlingClient(on_call=...)``: ``code`` None means no readable answer."""
        self.kling_calls[(endpoint, "none" if code is None else str(code))] += 1

    def callback(self, result: str, reason: str = "") -> None:
        self.callbacks[(result, reason)] += 1

    def poll(self, kind: str, method: str) -> None:
        self.polls[(kind, method)] += 1

    def render(self, tasks_by_state: Mapping[str, int], queue_length: Mapping[str, int]) -> str:
        callbacks = [
            ((("result", result), *((("reason", reason),) if reason else ())), n)
            for (result, reason), n in sorted(self.callbacks.items())
        ]
        lines = [
            *_family(
                "kling_bot_tasks",
                "gauge",
                "Tasks in the store, by state.",
                [((("state", s),), n) for s, n in sorted(tasks_by_state.items())],
            ),
            *_family(
                "kling_bot_queue_length",
                "gauge",
                "Tasks waiting in the admission queue.",
                [((("kind", k),), n) for k, n in sorted(queue_length.items())],
            ),
            *_family(
                "kling_bot_kling_calls_total",
                "counter",
                "Kling API calls by endpoint and code (code none: no readable answer).",
                [
                    ((("endpoint", e), ("code", c)), n)
                    for (e, c), n in sorted(self.kling_calls.items())
                ],
            ),
            *_family(
                "kling_bot_callbacks_total",
                "counter",
                "Callbacks received, by outcome (and why refused).",
                callbacks,
            ),
            *_family(
                "kling_bot_polls_total",
                "counter",
                "Poller requests to Kling, by kind and method.",
                [((("kind", k), ("method", m)), n) for (k, m), n in sorted(self.polls.items())],
            ),
            *_summary(
                "kling_bot_download_seconds",
                "Time to download one task's results.",
                self.download_seconds,
            ),
            *_summary(
                "kling_bot_delivery_seconds",
                "Time from the end at Kling to the result being posted.",
                self.delivery_seconds,
            ),
        ]
        return "\n".join(lines) + "\n"


def _family(
    name: str, kind: str, help_text: str, samples: Iterable[tuple[LabelSet, float]]
) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{_labels(labels)} {_number(value)}" for labels, value in samples]
    return lines


def _summary(name: str, help_text: str, summary: Summary) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} summary"]
    for q in Summary.QUANTILES:
        value = summary.quantile(q)
        if value is not None:
            lines.append(f'{name}{{quantile="{q}"}} {_number(value)}')
    lines.append(f"{name}_count {summary.count}")
    lines.append(f"{name}_sum {_number(summary.total)}")
    return lines
