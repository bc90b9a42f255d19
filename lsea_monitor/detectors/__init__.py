"""OoD detectors on entropy features. Everywhere: HIGHER score = MORE OoD (less safe).

``DETECTORS`` maps each detector's ``name`` (as stored in an artefact) to its class.
"""

from __future__ import annotations

from lsea_monitor.detectors.base import OODDetector
from lsea_monitor.detectors.kde_classifier import KDEClassifier
from lsea_monitor.detectors.mahalanobis import MahalanobisDetector
from lsea_monitor.detectors.one_class_kde import OneClassKDE
from lsea_monitor.detectors.ppca import PPCADetector

__all__ = ["DETECTORS", "KDEClassifier", "MahalanobisDetector", "OODDetector", "OneClassKDE", "PPCADetector"]

DETECTORS: dict[str, type[OODDetector]] = {
    cls.name: cls for cls in (KDEClassifier, OneClassKDE, MahalanobisDetector, PPCADetector)
}
