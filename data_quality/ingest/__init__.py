"""Ingest: one reader per source format, each returning the pair table plus rejects and quarantine."""

from data_quality.ingest.api import FORMATS, READERS, IngestError, IngestResult, detect_format, ingest_files
from data_quality.ingest.model_outputs import multi_completion_from_model_outputs
from data_quality.ingest.options import PAIRING_RULES, IngestOptions

__all__ = [
    "FORMATS",
    "PAIRING_RULES",
    "READERS",
    "IngestError",
    "IngestOptions",
    "IngestResult",
    "detect_format",
    "ingest_files",
    "multi_completion_from_model_outputs",
]
