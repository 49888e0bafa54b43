"""A simulated EV-charging, PV and box-transformer fleet that publishes telemetry over MQTT.

Physics is deterministic for a seed; faults can be injected and leave ground truth behind so
rules can be scored against what really happened.
"""

from simulator.core import FleetSimulator, OutMessage, event_topic, telemetry_topic
from simulator.faults import FAULT_KINDS, FaultRecord, FaultSpec, parse_fault
from simulator.fleet import METRIC_UNITS, DeviceSpec, SiteSpec, demo_fleet, demo_site, metric_names

__all__ = [
    "FAULT_KINDS",
    "METRIC_UNITS",
    "DeviceSpec",
    "FaultRecord",
    "FaultSpec",
    "FleetSimulator",
    "OutMessage",
    "SiteSpec",
    "demo_fleet",
    "demo_site",
    "event_topic",
    "metric_names",
    "parse_fault",
    "telemetry_topic",
]
