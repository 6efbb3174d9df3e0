"""ops/prometheus/alerts.yml: a valid Prometheus rule file whose expressions use only metrics
zapstream really exports. `promtool check rules` when promtool is installed; the structure,
durations and brackets are checked here either way, and every metric name is looked up in a
scrape of a running `zapstream serve`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from tests.notifications import SECRET, VERIFY_TOKEN
from tests.servers import free_port
from tests.zapstream.scraping import ROOT, Command, exported_names, scrape_text

RULES = ROOT / "ops" / "prometheus" / "alerts.yml"
# The alerts the issue asks for, by the metric each one watches.
REQUIRED = {
    "ZapstreamDeadLettersGrowing": "zapstream_dead_letters",
    "ZapstreamLagGrowing": "zapstream_group_lag",
    "ZapstreamTrimmingPinned": "zapstream_retention_pinned_entries",
    "ZapstreamSenderPaused": "zapstream_sending_paused",
    "ZapstreamRedisMemoryHigh": "zapstream_redis_maxmemory_bytes",
}
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
METRIC = re.compile(r"\bzapstream_[a-z0-9_]+\b")
PAIRS = {")": "(", "]": "[", "}": "{"}


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    found = []
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"]
        found += group["rules"]
    return found


def balanced(expr: str) -> bool:
    stack: list[str] = []
    for char in re.sub(r'"[^"]*"', '""', expr):  # brackets inside label values do not count
        if char in "([{":
            stack.append(char)
        elif char in PAIRS and (not stack or stack.pop() != PAIRS[char]):
            return False
    return not stack


def test_every_rule_is_complete() -> None:
    """promtool's check where it is installed (the project does not install it); this test's
    own checks of the structure everywhere."""
    promtool = shutil.which("promtool")
    if promtool is not None:
        result = subprocess.run(
            [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
    print(f"promtool: {'checked' if promtool else 'not installed; the file is parsed here'}")
    found = rules()
    names = [rule["alert"] for rule in found]
    assert len(names) == len(set(names))
    assert set(REQUIRED) <= set(names)
    for rule in found:
        name = rule["alert"]
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, name
        assert DURATION.match(rule["for"]), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert set(rule["annotations"]) == {"summary", "description"}, name
        where = rule["annotations"]["description"]  # names a command to look with
        assert "`zapstream " in where or "`redis-cli " in where, name
        expr = rule["expr"]
        assert balanced(expr), name
        assert all(DURATION.match(r) for r in re.findall(r"\[([^\]]+)\]", expr)), name
        for text in rule["annotations"].values():
            assert text.count("{{") == text.count("}}"), name
    watched = {rule["alert"]: METRIC.findall(rule["expr"]) for rule in found}
    for alert, metric in REQUIRED.items():
        assert metric in watched[alert], alert


async def test_every_metric_a_rule_uses_and_readme_lists_is_exported(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "REDIS_URL": redis_url,
        "ZAPSTREAM_CONFIG": str(ROOT / "streams.yaml"),
        "WHATSAPP_APP_SECRET": SECRET,
        "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
    }
    serve = Command("serve", ["serve", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path)
    url = f"http://127.0.0.1:{port}/metrics"
    await serve.start(url)
    try:
        text = await scrape_text(url)
    finally:
        await serve.stop()
    exported = exported_names(text)
    used = {metric for rule in rules() for metric in METRIC.findall(rule["expr"])}
    assert used and used <= exported, sorted(used - exported)
    # README's table lists each metric by the name a query uses, and no other.
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Metrics and alerts") : readme.index("## Settings")]
    documented = set(re.findall(r"^\| `(zapstream_[a-z_]+)`", section, re.MULTILINE))
    assert documented == queried_names(text)


def queried_names(text: str) -> set[str]:
    """Each family's name as a query uses it: counters with `_total`, histograms bare (their
    `_bucket`, `_sum`, `_count` follow), and without prometheus-client's `_created` series."""
    return {
        family.name + ("_total" if family.type == "counter" else "")
        for family in text_string_to_metric_families(text)
        if not family.name.endswith("_created")
    }
