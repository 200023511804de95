"""The long-lived objects every controller shares, built once at startup (Kopf's memo holds it)."""

from __future__ import annotations

from dataclasses import dataclass

from sidecarless.config import Settings
from sidecarless.endpoints.live import EndpointRegistry
from sidecarless.events import EventRecorder
from sidecarless.kube import Kube
from sidecarless.store import Stores


@dataclass
class Context:
    settings: Settings
    kube: Kube
    events: EventRecorder
    endpoints: EndpointRegistry
    stores: Stores
