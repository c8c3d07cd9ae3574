"""dnsgate heuristics: a pure DNS-tunnelling detection library.

No I/O except the state backends; never imports ``resolver``. See
``docs/detection.md`` for how it decides and every setting.
"""

from .detector import SEVERITIES, Detector, Verdict
from .features import NameFeatures, expected_entropy, features_of, shannon_entropy
from .names import name_to_text, registrable_domain
from .settings import DetectorSettings, SettingsError

__all__ = [
    "SEVERITIES",
    "Detector",
    "DetectorSettings",
    "NameFeatures",
    "SettingsError",
    "Verdict",
    "expected_entropy",
    "features_of",
    "name_to_text",
    "registrable_domain",
    "shannon_entropy",
]
