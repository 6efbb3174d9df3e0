"""The webhook, processor and projection tests again, on a Redis Cluster of their own.

    .venv/bin/python scripts/test_on_cluster.py [PYTEST_ARGS...]

Starts a three-primary Redis Cluster on free loopback ports (tests/cluster.py: redis-server
--cluster-enabled yes, redis-cli --cluster create), points the tests' Redis at one of its
nodes (ZAPSTREAM_TEST_REDIS_URL; zapstream finds the others) and runs tests/ingest,
tests/processors and tests/projections there, leaving out the few marked `single_redis`
(they read one server's own statistics, or record across partitions in one hash tag). The
cluster is stopped at the end; the exit status is pytest's. `make test` runs it after the
main suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cluster import OwnCluster  # noqa: E402

SUITES = ["tests/ingest", "tests/processors", "tests/projections"]


def main(extra: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="zapstream-cluster-") as directory:
        cluster = OwnCluster(Path(directory))
        try:
            cluster.start()
            print(f"Redis Cluster on ports {cluster.ports}: {', '.join(SUITES)}", flush=True)
            env = {**os.environ, "ZAPSTREAM_TEST_REDIS_URL": cluster.url}
            command = [sys.executable, "-m", "pytest", "-m", "not single_redis", *SUITES, *extra]
            return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
        finally:
            cluster.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
