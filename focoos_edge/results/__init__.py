"""The results stage, between inference and delivery: each inference result is scaled back to the
original frame, filtered, given its zones, tracked into events and turned into the payloads that
delivery publishes. The daemon only wires it: ``Uplink(..., on_result=results.handle)``."""

from focoos_edge.results.stage import (
    EventFigures,
    Results,
    ResultsCameraSnapshot,
    ResultsSnapshot,
)

__all__ = [
    "EventFigures", "Results", "ResultsCameraSnapshot", "ResultsSnapshot",
]
