"""Who a command acts as: the owner of the service's state it touches.

The service runs as its own user (`edge-agent`) and owns its spool and no-read folder. An operator
running `sudo edge-agent spool flush` (or `replay`, `check`, ...) would otherwise leave root-owned
files there (`queue.sqlite3`, `spool.lock`, `clips/`), which the service then cannot open: it exits
73 and systemd restarts it in a loop. So, as `pg_ctl` and `sudo -u` do, a command run as root on
state owned by another user becomes that user (groups, group, user, in that order, before any
file of the state is opened), with HOME and the XDG variables of that user. A command run by some
other unprivileged user cannot do that and is refused with the exact command to use.

The owner of a state folder is the first owner other than root found walking up from it: the folder
itself, or (when it does not exist yet, or root made it by mistake) the service's state directory
above it (`/var/lib/edge-agent`, made by the package's tmpfiles.d entry or systemd's
StateDirectory=). A tree owned by root all the way up (a developer's box, a test's temp dir) is
root's: the command just runs.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edge_agent import const

# Variables a login as the user would set differently; dropped so defaults resolve as for that user.
_PER_USER_VARS = ("XDG_STATE_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR",
                  "MAIL")


class NotOwner(Exception):
    """An unprivileged user other than the state's owner ran a command that would write it."""


@dataclass(frozen=True)
class Owner:
    """The account that owns a state folder, and the folder whose owner decided it."""

    uid: int
    gid: int
    name: str  # the account name, or the uid as text when it has none
    home: str | None
    decided_by: Path

    @property
    def known(self) -> bool:
        return self.name != str(self.uid)


def _account(uid: int, gid: int, decided_by: Path) -> Owner:
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:  # a uid with no account (e.g. a disk from another system): its folder's group
        return Owner(uid, gid, str(uid), None, decided_by)
    return Owner(uid, pw.pw_gid, pw.pw_name, pw.pw_dir, decided_by)


def folder_owner(path: str | os.PathLike[str]) -> Owner | None:
    """The first non-root owner of `path` or of a folder above it; None when root owns them all."""
    p = Path(os.path.abspath(path))
    for candidate in (p, *p.parents):
        try:
            st = candidate.stat()
        except OSError:
            continue  # not there (yet): its parent decides
        if st.st_uid != 0:
            return _account(st.st_uid, st.st_gid, candidate)
    return None


def state_owner(paths: Iterable[str | os.PathLike[str]]) -> Owner | None:
    """The one owner of all the state folders a command touches (None: root's, or nobody's)."""
    owners = {o.uid: o for o in (folder_owner(p) for p in paths) if o is not None}
    if len(owners) > 1:
        names = ", ".join(f"{o.decided_by} is {o.name}'s" for o in owners.values())
        raise NotOwner(f"the state folders belong to different users ({names}): give them one owner "
                       f"(sudo chown -R USER: FOLDER)")
    return next(iter(owners.values()), None)


def current_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def command_line() -> str:
    """This command as the operator typed it, with `edge-agent` for the program when it is on PATH."""
    prog = Path(sys.argv[0]).name
    if prog == "edge-agent" or (prog in ("cli.py", "__main__.py") and shutil.which("edge-agent")):
        head = ["edge-agent"]
    elif prog in ("cli.py", "__main__.py"):
        head = [sys.executable, "-m", "edge_agent.cli"]
    else:
        head = [sys.argv[0]]
    return shlex.join(head + sys.argv[1:])


def as_owner_command(owner: Owner) -> str:
    return f"sudo -u {shlex.quote(owner.name if owner.known else '#' + owner.name)} {command_line()}"


def chown_fix(folder: str | os.PathLike[str], user: str | None = None) -> str:
    """The command that gives a state folder back to the service (or to `user`)."""
    return f"sudo chown -R {shlex.quote(user or const.SERVICE_USER)}: {shlex.quote(str(folder))}"


def become(owner: Owner) -> None:
    """Drop root for good: supplementary groups (so group video still opens cameras), group, user;
    then the environment a login as that user would have."""
    if owner.known:
        os.initgroups(owner.name, owner.gid)
    else:
        os.setgroups([])
    os.setgid(owner.gid)
    os.setuid(owner.uid)
    if os.geteuid() == 0 or os.getegid() != owner.gid:  # setuid would have raised; belt and braces
        raise OSError(f"could not become {owner.name}")
    for var in _PER_USER_VARS:
        os.environ.pop(var, None)
    if owner.known:
        os.environ.update(USER=owner.name, LOGNAME=owner.name)
    if owner.home:
        os.environ["HOME"] = owner.home


def _unreadable_code(owner: Owner) -> str:
    """The first of Python's library, edge-agent's code, the installed packages, that `owner` cannot
    read ("" when all are readable): modules imported after the switch come from there. Tried in a
    forked child that becomes `owner`, so no rule of permissions is re-implemented here."""
    import edge_agent

    needed = [os.path.dirname(os.__file__), os.path.dirname(edge_agent.__file__),
              *(p for p in sys.path if p.endswith("-packages") and os.path.isdir(p))]
    pid = os.fork()
    if pid == 0:  # the child: try, answer with the exit status, never return into the command
        code = 0
        try:
            become(owner)
            for i, path in enumerate(needed, 1):
                if not os.access(path, os.R_OK | os.X_OK):
                    code = i
                    break
        except BaseException:
            code = 255
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return ""
    return needed[code - 1] if 0 < code <= len(needed) else f"its own files (could not become {owner.name})"


def act_as_state_owner(command: str, paths: Iterable[str | os.PathLike[str]], *, refuse: bool = True) -> Owner | None:
    """Call before the command opens any file of the service's state (`paths`: its spool, its
    no-read folder). Root on another user's state becomes that user, and says so on stderr; an
    unprivileged user on another user's state is refused with the exact command (exit 73), unless
    `refuse` is False (`check`, which reports what it finds instead). Returns the owner acted as."""
    try:
        owner = state_owner(paths)
    except NotOwner as exc:
        print(f"edge-agent {command}: {exc}", file=sys.stderr)
        raise SystemExit(const.EXIT_CANTCREAT) from None
    if owner is None or owner.uid == os.geteuid():
        return None
    if os.geteuid() == 0:
        unreadable = _unreadable_code(owner)
        if unreadable:
            print(f"edge-agent {command}: {owner.decided_by} belongs to {owner.name}, but {owner.name} cannot read "
                  f"{unreadable}, which this command needs after becoming {owner.name}: install edge-agent where "
                  f"every user can read it (as the package does), or run as {owner.name}: {as_owner_command(owner)}",
                  file=sys.stderr)
            raise SystemExit(const.EXIT_CANTCREAT)
        become(owner)
        print(f"edge-agent {command}: running as {owner.name}, the owner of {owner.decided_by}, so that "
              "the service can still use what this command writes", file=sys.stderr)
        return owner
    if refuse:
        print(f"edge-agent {command}: {owner.decided_by} belongs to {owner.name}, not to {current_user()}: "
              f"run it as {owner.name}: {as_owner_command(owner)}", file=sys.stderr)
        raise SystemExit(const.EXIT_CANTCREAT)
    return None
