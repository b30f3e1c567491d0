"""The cache's config: what is rejected at load."""

from __future__ import annotations

import pytest


def test_config_rejects_a_redis_cache_without_url_or_client(monkeypatch: pytest.MonkeyPatch) -> None:
    from labgate.config.problems import ConfigError
    from labgate.config.schema import gateway
    from labgate.testing.gateway import config_from

    with pytest.raises(ConfigError, match="no Redis URL is set"):
        config_from({}, None, {"cache": {"backend": "redis"}})
    with pytest.raises(ConfigError, match="only used by backend: redis"):
        config_from({}, None, {"cache": {"backend": "memory", "url": "redis://127.0.0.1/0"}})
    monkeypatch.setattr(gateway, "find_spec", lambda name: None)  # the redis extra is not installed
    with pytest.raises(ConfigError, match=r"pip install 'labgate\[redis\]'"):
        config_from({}, None, {"state": {"url": "redis://127.0.0.1/0"}, "cache": {}})
    assert config_from({}, None, {"state": {"url": "redis://127.0.0.1/0"}, "cache": {"backend": "memory"}})
