"""Scoring detectors against a scenario's ground truth: alerts → episodes → scores → report.

Detectors say the same thing many times while a condition lasts, so alerts are first folded into
episodes the way the alert store keeps them (``episodes``); episodes are then matched to labels and
counted (``scores``), and the counts, a table and a few example plots are written (``report``).
"""
