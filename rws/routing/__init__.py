"""Test-time patch routing: recognise each batch's shift and apply the matching signature."""

from rws.routing.detector import DETECTORS, Detector
from rws.routing.library import NONE
from rws.routing.router import MODES, Route, Router

__all__ = ["DETECTORS", "MODES", "NONE", "Detector", "Route", "Router"]
