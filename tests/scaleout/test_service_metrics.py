"""examples/service's GET /metrics: marketstore's OpenTelemetry metrics in Prometheus' text format."""
from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("opentelemetry.exporter.prometheus")
httpx = pytest.importorskip("httpx")

from service_process import Service  # noqa: E402


@pytest.fixture(scope="module")
def service(database_url):
    # One worker: /metrics reports the process that served the request before it.
    service = Service.start({"MARKETSTORE_DATABASE_URL": database_url, "MARKETSTORE_TELEMETRY": "on"}, workers=1)
    try:
        yield service
    finally:
        service.stop()


def test_metrics_after_a_request(service, db):
    with httpx.Client(base_url=service.url, timeout=30) as http:
        assert http.get("/prices/AAA", params={"start": "2026-03-02", "end": "2026-03-03"}).json() == []
        response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    lines = response.text.splitlines()
    durations = [line for line in lines if line.startswith("db_client_operation_duration")]
    assert any('db_operation_name="get_range"' in line and 'db_collection_name="prices"' in line
               for line in durations), durations[:5]
    assert any('db_query_summary="SELECT prices"' in line for line in durations)
    pools = [line for line in lines if line.startswith("db_client_connection_count")]
    assert any('db_client_connection_state="idle"' in line for line in pools), lines[:40]
