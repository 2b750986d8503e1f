"""Labelling web page for the sink's frames (``lineguard label``): ``server`` (HTTP + JSON API), ``page`` (HTML/JS).

Runs beside the sink on the same store (``lineguard.sink.labels.LabelBook``); never on the edge box's
inspection path.
"""
