"""The one error of drafting: no spec can be drafted from these references.

Its own module so that both drafts (agent.audit.draft by colour, agent.audit.product_draft on a
product's parts) raise it without importing each other.
"""

from __future__ import annotations


class DraftError(ValueError):
    """No spec can be drafted from these references (one clear line)."""


__all__ = ["DraftError"]
