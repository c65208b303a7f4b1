"""Ingest: MQTT uplinks in, validated batches committed to the database, PUBACK after commit."""
