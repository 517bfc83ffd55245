"""The toolkit's client settings: standard retries alone, adaptive when shared by threads."""

from __future__ import annotations

from sealboot.aws import aws_client


def test_single_client_uses_standard_retries() -> None:
    client = aws_client("secretsmanager", region="eu-west-1", endpoint_url=None)
    assert client.meta.config.retries["mode"] == "standard"
    assert client.meta.config.retries["total_max_attempts"] == 9  # 8 retries plus the call


def test_shared_bulk_client_rate_limits_all_threads_together() -> None:
    client = aws_client("secretsmanager", region="eu-west-1", endpoint_url=None, workers=64)
    assert client.meta.config.retries["mode"] == "adaptive"
    assert client.meta.config.max_pool_connections == 64


def test_fips_endpoint_is_resolved_when_asked() -> None:
    client = aws_client("ssm", region="us-east-1", endpoint_url=None, use_fips=True)
    assert client.meta.endpoint_url == "https://ssm-fips.us-east-1.amazonaws.com"
