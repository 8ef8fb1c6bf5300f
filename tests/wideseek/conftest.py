"""Shared fixtures for the wideseek tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def full_world():
    """Every page kind, 2,000 of the Wikipedia summaries (distractors), FTS5 index; built once per session."""
    from leanlm.wideseek.corpus import build_corpus
    from leanlm.wideseek.tools import WorldTools

    return WorldTools(build_corpus(wiki_limit=2000))
