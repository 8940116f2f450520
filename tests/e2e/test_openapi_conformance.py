"""Schemathesis, with every check and every phase, against the platform as `make run` starts it,
and as the distributed mode runs it (one process per service on RabbitMQ and PostgreSQL).

What the OpenAPI document allows, the gateway accepts; what it refuses, the gateway refuses;
every answer has the status, headers and body the document says; nothing is a 500. The number of
examples is bounded (`FUZZ_EXAMPLES`, 25 per operation by default) and the seed is fixed
(`FUZZ_SEED`) so that CI runs the same cases; set either to look further.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bench.cluster import Platform

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
EXAMPLES = os.environ.get("FUZZ_EXAMPLES", "25")
SEED = os.environ.get("FUZZ_SEED", "20261207")


# Who calls, and which operations: an installer everything but logging itself out, here or
# everywhere (which would end the session the run uses), and the distributor's routes; a
# distributor those (creating installers, registering MACs to them).
DISTRIBUTOR_PATHS = ("/api/v1/installers", "/api/v1/installers/{installer_id}/mac-library",
                     "/api/v1/installers/{installer_id}/mac-library/import")
RUNS = {
    "installer": ["--exclude-path", "/api/v1/auth/logout",
                  "--exclude-path", "/api/v1/auth/logout-everywhere",
                  *(arg for path in DISTRIBUTOR_PATHS for arg in ("--exclude-path", path))],
    "distributor": [arg for path in DISTRIBUTOR_PATHS for arg in ("--include-path", path)],
}


@pytest.mark.parametrize("who", list(RUNS))
def test_requests_made_to_the_document_find_no_failure(platform: Platform, who: str) -> None:
    token = (platform.distributor_token() if who == "distributor"
             else platform.installer_session(f"fuzz{uuid.uuid4().hex[:8]}"))
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file", str(HERE / "schemathesis.toml"), "run",
        f"{platform.base}/openapi.json", "--checks", "all",
        # in its place, the same check aware of the rules checked against what is stored
        "--exclude-checks", "positive_data_acceptance",
        "--max-examples", EXAMPLES, "--seed", SEED, "--workers", "1",
        "--suppress-health-check", "all", *RUNS[who],
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.e2e.schemathesis_hooks", "FUZZ_TOKEN": token,
           "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=900, check=False)

    assert result.returncode == 0, result.stdout[-30000:] + result.stderr[-5000:]
    assert " passed" in result.stdout  # it ran cases, not nothing
