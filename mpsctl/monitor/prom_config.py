"""What Prometheus and Alertmanager need beside the metrics: the shipped rules (optionally
on a shorter clock), the scrape jobs, and Alertmanager's route and inhibit rules.

``--time-scale F`` multiplies every duration by ``F``: in the shipped rules each ``for:``,
each range window ``[10m]`` and each age in seconds (``time() - ... > 180``); in the scrape
jobs the interval; in Alertmanager's route the group wait, group interval and repeat
interval. The same
configuration on a faster clock, so a test or a demo sees alerts fire, arrive and resolve in
seconds, with nothing written by hand. The text is printed, never installed.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from mpsctl import contrib
from mpsctl.errors import ConfigError

_UNIT_S = {"s": 1, "m": 60, "h": 3600}
_FOR = re.compile(r"(?m)^(\s+for: )(\d+)([smh])\s*$")
_RANGE = re.compile(r"\[(\d+)([smh])\]")
#: an age in seconds: how old the probe may be, how new a counter is
_AGE = re.compile(r"(time\(\) - mpsctl_\w+ [<>] )(\d+)")
_RUNBOOK = re.compile(r'(runbook_url: )"(docs/[^"]+)"')

#: the job names the rules and the dashboard expect (``up{job="mpsctl-exporter"}``)
EXPORTER_JOB = "mpsctl-exporter"
SERVICE_JOB = "mpsctl-service"


def _seconds(value: float) -> str:
    return f"{max(1, round(value))}s"


def _check_scale(time_scale: float) -> None:
    if not 0 < time_scale <= 1:
        raise ConfigError(f"--time-scale {time_scale:g}: give a factor above 0, at most 1")


def check_runbook_base(base: str) -> str:
    """``base`` as the prefix of every ``runbook_url``: an absolute http(s) URL, ending in /.

    The annotation holds it as a YAML string and Alertmanager's receivers show it as a
    link: a space, a quote or a control character would make it another link or break
    the file, so those are refused."""
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--runbook-base {base!r}: give an http:// or https:// URL")
    if any(c.isspace() or c in "\"'<>\\" or ord(c) < 32 or ord(c) == 127 for c in base):
        raise ConfigError(
            f"--runbook-base {base!r}: spaces, quotes, <, > and control characters cannot "
            "appear in a URL (percent-encode them)"
        )
    return base if base.endswith("/") else base + "/"


def rules_text(time_scale: float = 1.0, runbook_base: str | None = None) -> str:
    """The shipped rules; with ``time_scale``, every duration in them multiplied by it; with
    ``runbook_base``, every ``runbook_url`` (``docs/fleet.md#name``) made absolute on it."""
    _check_scale(time_scale)
    text = contrib.read_text(contrib.RULES)
    if runbook_base is not None:
        base = check_runbook_base(runbook_base)
        text = _RUNBOOK.sub(lambda m: m.group(1) + json.dumps(base + m.group(2)), text)
    if time_scale == 1.0:
        return text
    text = _FOR.sub(
        lambda m: m.group(1) + _seconds(int(m.group(2)) * _UNIT_S[m.group(3)] * time_scale),
        text,
    )
    text = _RANGE.sub(
        lambda m: "[" + _seconds(int(m.group(1)) * _UNIT_S[m.group(2)] * time_scale) + "]",
        text,
    )
    text = _AGE.sub(lambda m: m.group(1) + str(max(1, round(int(m.group(2)) * time_scale))), text)
    return f"# every duration below multiplied by {time_scale:g} (--time-scale)\n" + text


def serves_metrics(reference: bool, command: Sequence[str]) -> bool:
    """Does the service run mpsctl's reference service (which serves ``/metrics``)? The
    default command does; so does a command of the operator's own that runs ``mpsctl serve``
    (``mpsctl serve --model ...``, ``python -m mpsctl serve ...``, a venv's ``bin/mpsctl``)."""
    if reference:
        return True
    words = [os.path.basename(word) for word in command]
    return ("mpsctl", "serve") in itertools.pairwise(words)


def scrape_config(
    exporters: Sequence[str], services: Sequence[str], time_scale: float = 1.0
) -> str:
    """The two scrape jobs, each target's ``instance`` its host (port dropped), so the
    exporter's and the service's series of one host line up in the rules and the dashboard.
    A scrape of the exporter takes one probe: up to its ``--timeout`` (3 s)."""
    _check_scale(time_scale)
    interval = _seconds(30 * time_scale)
    # a scaled interval may be shorter than 10 s: the timeout may not exceed it
    scrape_timeout = "10s" if time_scale == 1.0 else interval

    def job(name: str, targets: Sequence[str], timeout: str | None) -> list[str]:
        lines = [f"  - job_name: {name}", f"    scrape_interval: {interval}"]
        if timeout:
            lines.append(f"    scrape_timeout: {timeout}  # one probe per scrape")
        lines += [
            "    static_configs:",
            f"      - targets: {json.dumps(list(targets))}",
            "    relabel_configs:",
            "      - source_labels: [__address__]",
            '        regex: "([^:]+):\\\\d+"',
            "        target_label: instance",
        ]
        return lines

    lines = [
        "# Prometheus scrape jobs for mpsctl: merge under scrape_configs in prometheus.yml",
        "scrape_configs:",
        *job(EXPORTER_JOB, exporters, scrape_timeout),
    ]
    if services:
        lines += job(SERVICE_JOB, services, None)
    return "\n".join(lines) + "\n"


def alertmanager_config(webhook_url: str, time_scale: float = 1.0) -> str:
    """A complete Alertmanager configuration: one route for mpsctl's alerts to a webhook
    receiver, and the inhibit rule (a host whose exporter is down has no other mpsctl alert).

    There is no rule for "a stopped service is not also unhealthy": MpsctlServiceUnhealthy's
    own expression excludes a stopped service (``unless ... mpsctl_service_up == 0``), so
    such a rule could never mute a new alert, only the resolved notice of an unhealthy
    service that then stops, which Alertmanager then never sends (an inhibited alert's
    resolution is not notified): the receiver would keep it open for good."""
    _check_scale(time_scale)
    url = json.dumps(webhook_url)  # a JSON string is a YAML string
    wait, group, repeat = (_seconds(s * time_scale) for s in (30, 300, 4 * 3600))
    return f"""\
# Alertmanager for mpsctl's alerts (`mpsctl exporter --alertmanager`): a complete file, or
# merge its route under yours and its inhibit_rules beside yours.
route:
  receiver: mpsctl
  group_by: [alertname, instance, service]
  group_wait: {wait}
  group_interval: {group}
  repeat_interval: {repeat}
  routes:
    - receiver: mpsctl
      matchers: ['alertname=~"Mpsctl.+"']
receivers:
  - name: mpsctl
    webhook_configs:
      - url: {url}
        send_resolved: true
inhibit_rules:
  # no figures from the host: every other mpsctl alert for it would be a guess
  - source_matchers: [alertname="MpsctlExporterDown"]
    target_matchers: ['alertname=~"Mpsctl.+"', alertname!="MpsctlExporterDown"]
    equal: [instance]
# (MpsctlServiceUnhealthy needs no inhibit rule against MpsctlServiceDown: its expression
# already leaves out a stopped service)
"""
