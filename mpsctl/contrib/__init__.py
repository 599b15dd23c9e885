"""Files for the tools around mpsctl: Prometheus alert rules and a Grafana dashboard.

They ship inside the package and are read with :mod:`importlib.resources`, so
``mpsctl exporter --rules`` / ``--dashboard`` print the copy that matches the installed
version's metric names.
"""

from __future__ import annotations

from importlib import resources

RULES = "prometheus-rules.yml"
DASHBOARD = "grafana-dashboard.json"


def read_text(name: str) -> str:
    """The text of one shipped file (``RULES`` or ``DASHBOARD``)."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
