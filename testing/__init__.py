"""Test doubles and helpers shared by the tests and the benchmark.

Not installed with the bot (pyproject packages only ``bot``, ``cogs`` and ``kling_sim``):
``tests/`` and ``bench/`` import it from the repository root. Nothing in the product imports it.

* ``testing.fake_discord``: a local fake of Discord's REST API and gateway driving the real
  discord.py.
* ``testing.bot_process``: the bot as a subprocess (``python -m bot run``) against the fakes.
* ``testing.images``, ``testing.settings``: image bytes and ``Settings`` pointed at the simulator.
* ``testing.tracker_harness``, ``testing.callbacks``: the task core driven over loopback.
* ``testing.discord_world``: the whole bot against the fake Discord (the ``world`` fixture).
* ``testing.paths``: where the repository is.
"""
