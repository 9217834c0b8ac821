"""How a simulator behaves: its keys, timings, slot limits and the faults it injects."""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.config import SIMULATOR_ACCESS_KEY, SIMULATOR_SECRET_KEY


@dataclass
class Faults:
    """Failure probabilities (0..1); the ``kling_sim`` package docstring says what each does."""

    server_error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    timeout_rate: float = 0.0
    lost_create_response_rate: float = 0.0
    malformed_rate: float = 0.0
    task_failure_rate: float = 0.0
    slow_rate: float = 0.0
    slow_seconds: float = 2.0
    expired_result_rate: float = 0.0
    callback_drop_rate: float = 0.0
    callback_duplicate_rate: float = 0.0
    callback_reorder: bool = False
    hang_seconds: float = 30.0


@dataclass
class SimulatorConfig:
    access_key: str = SIMULATOR_ACCESS_KEY
    secret_key: str = SIMULATOR_SECRET_KEY
    api_keys: frozenset[str] = frozenset({"sim-api-key"})
    submitted_seconds: float = 0.5
    processing_seconds: float = 3.0
    image_concurrency: int | None = None
    video_concurrency: int | None = None
    faults: Faults = field(default_factory=Faults)
    seed: int | None = None
    media_size: int = 512
