"""Helpers every leanlm module shares: seeding, atomic writes, record IO, progress, models, data."""

from leanlm.common.atomic import atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text
from leanlm.common.records import RecordError, read_jsonl, read_records
from leanlm.common.seeding import seed_everything

__all__ = [
    "RecordError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "read_jsonl",
    "read_records",
    "seed_everything",
]
