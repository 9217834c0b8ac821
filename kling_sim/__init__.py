"""A local stand-in for Kling's API: every flavour, its validation, task lifecycle and failures.

Its own package, beside the bot rather than inside it: the bot imports it only when it is told
to simulate (``--simulate``), so a real deployment never loads it. Operators use it to try the
whole bot without Kling credits; tests and benchmarks use it instead of Kling. One aiohttp app
(``simulator``) serves:

* official ``/v1/images/multi-image2image`` and ``/v1/videos/multi-image2video`` (JWT, HS256,
  ``iss`` = access key, ``exp``/``nbf`` checked with Kling's ~5 s leeway: ``auth``);
* gateway ``/kling/v1/...`` (same paths, Bearer API key, ``scence_image``, plain-string subjects);
* CometAPI ``POST /kling/v1/images/generations`` and ``GET .../generations/{id}`` (Bearer, 2..4
  subjects);
* ``GET /results/{task_id}/{index}.png|.mp4`` (``{index}-wm.*`` when watermarked): real media
  made on first download (``media``, ``results``) and cached. Videos need PyAV, the
  ``video-sim`` extra; without it a video create is refused with a line saying so.

A task (``tasks``) is ``submitted`` for ``submitted_seconds``, ``processing`` for
``processing_seconds``, then ``succeed`` or ``failed``. Status is computed from timestamps, so
idle tasks cost no timers; only tasks with a ``callback_url`` get ``loop.call_later`` handles,
one per callback (``callbacks``). A task holds its concurrency slots (image: ``n``, video: 1)
until it ends, failures too. Unknown task ids answer HTTP 404 code 1203.
``final_unit_deduction`` is set when a task ends: image ``n`` units (one per image), video 1 unit
per 5 s in ``std`` and 2 in ``pro``; a failed task costs "0". Create bodies are checked as Kling
checks them (``validation``).

Faults (``Faults``, drawn from ``random.Random(seed)`` in ``faults``; request faults apply to
create, query and list after authentication, in this order):

* ``timeout_rate``: sleep ``hang_seconds``, then HTTP 504 code 5002; nothing is created.
* ``rate_limit_rate``: HTTP 429 code 1302; nothing is created.
* ``server_error_rate``: HTTP 500 code 5000; nothing is created.
* ``malformed_rate``: HTTP 200 whose body is HTML or truncated JSON; nothing is created.
* ``slow_rate``: the answer is delayed by ``slow_seconds``, otherwise normal.
* ``lost_create_response_rate`` (create only): the task IS created, then the answer hangs for
  ``hang_seconds`` and the connection is dropped without a response.
* ``task_failure_rate`` (per task): ends ``failed`` with a content-safety ``task_status_msg``.
* ``expired_result_rate`` (per task): ends ``succeed`` but its result URLs answer 404.
* ``callback_drop_rate`` / ``callback_duplicate_rate`` (per callback): not sent / sent twice.
* ``callback_reorder``: a task's callbacks are held until it ends and sent newest first
  (final, processing, submitted).

The public names are importable from here and, as before, from ``kling_sim.simulator``.
"""

from kling_sim.simulator import (
    FAILURE_MESSAGE,
    ApiError,
    Faults,
    KlingSimulator,
    SimTask,
    SimulatorConfig,
    simulated_settings,
)

__all__ = [
    "FAILURE_MESSAGE",
    "ApiError",
    "Faults",
    "KlingSimulator",
    "SimTask",
    "SimulatorConfig",
    "simulated_settings",
]
