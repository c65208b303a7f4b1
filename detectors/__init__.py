"""Streaming detectors: pure, stateful, event time only. Imports nothing from ingest, api or storage."""
