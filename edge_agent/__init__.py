"""edge-agent: QR-code CIDs from a camera, a clip around each, delivered without loss."""

from importlib import metadata

# The distribution's name on the package index ("edge-agent" there is an unrelated project).
DIST_NAME = "cid-edge-agent"

try:
    # the installed metadata is the one truth: setuptools-scm wrote it from git at build time
    __version__ = metadata.version(DIST_NAME)
except metadata.PackageNotFoundError:  # a source tree that was never installed (pip install -e .)
    __version__ = "0.0.0+unknown"

try:
    # written by setuptools-scm at build time beside the version ("g" + short hash, or None when the
    # version was given by SETUPTOOLS_SCM_PRETEND_VERSION or read from an sdist without git)
    from edge_agent._version import commit_id as _commit_id
except ImportError:
    _commit_id = None

# the short git commit of this build, without setuptools-scm's "g" prefix; "unknown" outside git
__commit__ = (_commit_id or "unknown").removeprefix("g")
