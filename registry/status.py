"""The release status a model version carries in its `fledge.status` tag, and tag names."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    CANDIDATE = "candidate"
    EVALUATING = "evaluating"
    REJECTED = "rejected"
    CANARY = "canary"
    CHAMPION = "champion"
    PREVIOUS = "previous"
    ROLLED_BACK = "rolled_back"
    RETIRED = "retired"


TAG_STATUS = "fledge.status"
TAG_MANIFEST = "fledge.manifest_sha256"
TAG_SIZE = "fledge.size_bytes"
TAG_SOURCE_PATH = "fledge.source_path"
TAG_SOURCE_VERSION = "fledge.source_version"  # lineage: the version this one was derived from
TAG_REGISTERED_BY = "fledge.registered_by"
