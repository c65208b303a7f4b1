"""meterwatch: the shared vocabulary of the pipeline (domain types, wire codec, settings, CLI)."""

__version__ = "0.1.0"
