"""The `zapstream` command as a user runs it: exit 0/1/2, one-line reasons, a real server."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from redis.asyncio import Redis

from tests.notifications import SECRET, fixture_bytes, signed_headers
from tests.servers import free_port
from zapstream.partitions import check_partitions
from zapstream.settings import Settings
from zapstream.topology import load_topology

ROOT = Path(__file__).resolve().parents[2]


def zapstream(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zapstream", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={"PATH": os.environ["PATH"], **(env or {})},
    )


def test_help_lists_the_commands() -> None:
    result = zapstream("--help")
    assert result.returncode == 0
    assert "serve" in result.stdout and "run" in result.stdout


def test_bad_usage_exits_2() -> None:
    assert zapstream("serve", "--port", "eighty").returncode == 2
    assert zapstream("no-such-command").returncode == 2


def test_missing_secret_exits_1_with_one_line_naming_it(tmp_path: Path) -> None:
    result = zapstream("serve", env={"ZAPSTREAM_CONFIG": str(ROOT / "streams.yaml")}, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "zapstream: missing setting WHATSAPP_APP_SECRET (set it in the environment or .env)"
    ]


def test_bad_streams_yaml_exits_1_naming_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "streams.yaml"
    config.write_text("streams: {messages: {}, statuses: {}}\ndedup: {window: forever}\n")
    result = zapstream(
        "serve",
        env={
            "ZAPSTREAM_CONFIG": str(config),
            "WHATSAPP_APP_SECRET": "s",
            "WHATSAPP_VERIFY_TOKEN": "t",
        },
        cwd=tmp_path,
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"zapstream: {config}: dedup.window: expected a duration")


def test_serve_answers_a_signed_post_and_stops_on_sigterm(redis_url: str) -> None:
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "REDIS_URL": redis_url,
        "WHATSAPP_APP_SECRET": SECRET,
        "WHATSAPP_VERIFY_TOKEN": "t",
        "ZAPSTREAM_CONFIG": str(ROOT / "streams.yaml"),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "zapstream", "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve did not answer within 20 s"
            assert process.poll() is None, process.communicate()
            time.sleep(0.05)  # polling for readiness with a deadline
        body = fixture_bytes("text_single.json")
        response = httpx.post(url + "/webhook/whatsapp", content=body, headers=signed_headers(body))
        assert response.status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0
    assert '"event": "webhook_serving"' in stderr  # JSON log lines off a terminal


def test_work_without_groups_exits_1_naming_the_problem(tmp_path: Path) -> None:
    config = tmp_path / "streams.yaml"
    config.write_text("streams: {messages: {}, statuses: {}}\n")
    result = zapstream("work", env={"ZAPSTREAM_CONFIG": str(config)}, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "zapstream: no consumer groups in streams.yaml (see `groups:`)"


def test_work_with_a_group_that_has_no_handler_exits_1(tmp_path: Path) -> None:
    config = tmp_path / "streams.yaml"
    config.write_text(
        "streams: {messages: {}, statuses: {}}\ngroups: {mine: {streams: [messages]}}\n"
    )
    result = zapstream("work", env={"ZAPSTREAM_CONFIG": str(config)}, cwd=tmp_path)
    assert result.returncode == 1
    assert "group 'mine' in streams.yaml has no handler" in result.stderr


async def test_a_log_refuses_another_partition_count(
    redis: Redis, redis_url: str, tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    one = load_topology(ROOT / "streams.yaml")
    await check_partitions(make_settings(), one)  # the first start records the count
    assert await redis.hget("zapstream:layout", "partitions") == b"1"
    await check_partitions(make_settings(), one)  # the same count starts

    config = tmp_path / "streams.yaml"
    config.write_text(
        (ROOT / "streams.yaml").read_text().replace("partitions: 1 ", "partitions: 4 ")
    )
    env = {
        "REDIS_URL": redis_url,
        "ZAPSTREAM_CONFIG": str(config),
        "WHATSAPP_APP_SECRET": SECRET,
        "WHATSAPP_VERIFY_TOKEN": "token",
    }
    result = await asyncio.to_thread(zapstream, "serve", "--port", str(free_port()), env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"zapstream: {config}: partitions is 4, but the log at REDIS_URL was written with 1: "
        'changing the count of a live log is refused (README "Scaling out": use a new prefix)'
    )
    assert await redis.hget("zapstream:layout", "partitions") == b"1"
