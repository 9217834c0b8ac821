"""Small helpers for the words people read, shared by the CLI and the Discord side."""

from __future__ import annotations


def quantity(amount: int | str, noun: str) -> str:
    """'1 credit', '2 credits', '0.5 credits': the noun agrees with the number."""
    try:
        one = float(amount) == 1
    except ValueError:
        one = False
    return f"{amount} {noun}" if one else f"{amount} {noun}s"
