"""Simulated meter fleets: a registry and readings (``fleet``), and an MQTT publisher (``publish``).

The simulator speaks the same v1 uplink contract as real meters, through ``meterwatch.codec``, so
everything downstream of the broker cannot tell the difference.
"""
