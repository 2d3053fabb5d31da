from tests.redisfixture import redis_server, redis_servers  # noqa: F401  (shared fixtures)
