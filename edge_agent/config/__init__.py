"""Configuration: the schema technicians' YAML is checked against, and its loader.

    schema.py        the pydantic model: sections, keys, defaults, live or restart-only
    loader.py        YAML + config.d/ fragments + environment overrides -> Config; provenance of each key
    yaml_errors.py   every problem as `file:line:column: key: problem (allowed: ...)`
"""

from edge_agent.config.loader import (
    config_sha256,
    config_sources,
    env_overrides,
    fragment_dir,
    fragments,
    load_config,
    parse_config,
    provenance,
)
from edge_agent.config.schema import (
    ASSUMED_BITRATE_BPS,
    ENV_PREFIX,
    EXIT_CONFIG,
    ClipConfig,
    Config,
    ConfigError,
    DetectorConfig,
    HttpConfig,
    NoReadsConfig,
    RoiConfig,
    SourceConfig,
    SpoolConfig,
    UploadConfig,
)

__all__ = [
    "ASSUMED_BITRATE_BPS", "ENV_PREFIX", "EXIT_CONFIG", "ClipConfig", "Config", "ConfigError", "DetectorConfig",
    "HttpConfig", "NoReadsConfig", "RoiConfig", "SourceConfig", "SpoolConfig", "UploadConfig", "config_sha256",
    "config_sources", "env_overrides", "fragment_dir", "fragments", "load_config", "parse_config", "provenance",
]
