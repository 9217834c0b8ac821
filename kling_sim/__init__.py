"""A Kling API simulator: every provider flavour, real PNG and MP4 results, fault injection.

Its own package, beside the bot rather than inside it: the bot imports it only when it is told
to simulate (``--simulate``), so a real deployment never loads it or its video encoder.
"""
