"""Image sources: the first stage of the edge pipeline (camera, replay, synthetic -> Frame).

Build one from the ``source:`` config with :func:`build_source`; back-ends are imported only when
chosen, so a box without harvesters runs replay and synthetic sources. See docs/sources.md.
"""

from __future__ import annotations

from lineguard.sources.base import (
    REGISTRY,
    BaseSource,
    PartIdFn,
    Source,
    SourceInfo,
    SourceStats,
    SourceStatsSnapshot,
    build_source,
    default_part_id,
    source_class,
)
from lineguard.sources.config import (
    GenICamSourceConfig,
    ReplaySourceConfig,
    SourceConfig,
    SyntheticSourceConfig,
)

__all__ = [
    "REGISTRY",
    "BaseSource",
    "GenICamSourceConfig",
    "PartIdFn",
    "ReplaySourceConfig",
    "Source",
    "SourceConfig",
    "SourceInfo",
    "SourceStats",
    "SourceStatsSnapshot",
    "SyntheticSourceConfig",
    "build_source",
    "default_part_id",
    "source_class",
]
