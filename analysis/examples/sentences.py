"""A built-in corpus of 300 English sentences for analysing language models offline.

Thirty topics, ten sentences each, written for intermod: everyday and technical subjects,
statements, questions and instructions, 4 to 35 MiniLM tokens (3685 in all), so that the
residual stream sees varied syntax and vocabulary. The text lives in ``data/sentences.json``;
``SENTENCES[i]`` has topic ``TOPICS[i]``.
"""

from __future__ import annotations

import json

from .cache import DATA_DIR

__all__ = ["BY_TOPIC", "SENTENCES", "TOPICS"]

_RAW = json.loads((DATA_DIR / "sentences.json").read_text(encoding="utf-8"))["topics"]
BY_TOPIC: dict[str, tuple[str, ...]] = {topic: tuple(group) for topic, group in _RAW.items()}
SENTENCES: tuple[str, ...] = tuple(s for group in BY_TOPIC.values() for s in group)
TOPICS: tuple[str, ...] = tuple(t for t, group in BY_TOPIC.items() for _ in group)
