"""Changeover without stopping the line: bundle store, signatures, hot swap, shadow, control endpoint.

Modules, in the order a bundle meets them: ``signing`` (Ed25519 over manifest.json), ``store``
(atomic install, versions, recipe map), ``swap`` (the controller the service builds), ``preload``
(prepared bundles in memory), ``shadow`` (candidate on live frames, rollback watch), ``control``
(authenticated local HTTP endpoint), ``config`` and ``metrics``. This package file imports nothing,
so ``lineguard.config`` can import the config model without pulling in the engines.
"""
