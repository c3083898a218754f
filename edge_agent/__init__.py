"""edge-agent: QR-code CIDs from a camera, a clip around each, delivered without loss."""

# The distribution's name on the package index ("edge-agent" there is an unrelated project).
DIST_NAME = "cid-edge-agent"

try:
    # written by the build backend (packaging/version_backend.py) from CHANGELOG.md and git, with the
    # same version the installed metadata and the .deb have; read first because importlib.metadata
    # costs ~50 ms of every command's start-up
    from edge_agent._version import commit_id as _commit_id
    from edge_agent._version import version as __version__
except ImportError:  # a source tree that was never built
    from importlib import metadata

    _commit_id = None
    try:
        __version__ = metadata.version(DIST_NAME)
    except metadata.PackageNotFoundError:
        __version__ = "0.0.0+unknown"

# the short git commit of this build, without its "g" prefix; "unknown" outside git or when the version
# was given by EDGE_AGENT_VERSION
__commit__ = (_commit_id or "unknown").removeprefix("g")
