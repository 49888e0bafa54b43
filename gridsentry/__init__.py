"""GridSentry: streaming telemetry monitor for EV-charging, PV and box-transformer fleets."""

__version__ = "0.1.0"
