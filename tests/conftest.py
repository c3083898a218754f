from tests.receiver_fixture import receiver  # noqa: F401  (a real edge server on 127.0.0.1)
