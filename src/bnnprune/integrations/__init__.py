"""Integrations with other frameworks, each behind an optional extra.

- :mod:`bnnprune.integrations.lightning`: ``FlipTrackingCallback`` (``pip install
  bnnprune[lightning]``).

The core package never imports these modules; import them yourself.
"""
