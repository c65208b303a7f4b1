"""Streaming detectors: pure, stateful, event time only.

This package imports nothing from ingest, api or storage.
"""
