"""Where Ray puts its sockets under a job's temp dir, and the check that they fit: no imports, so
loading a site profile (which runs the check) stays fast on a login node."""

from __future__ import annotations

# The job's Ray temp dir is <ray.temp_dir>/hpcb-ray-<short job id>. Ray puts its sockets under
# session_<YYYY-MM-DD_HH-MM-SS>_<usec>_<pid>/sockets/plasma_store and refuses paths whose length passes
# what AF_UNIX allows (107 bytes).
RAY_DIR_PREFIX = "hpcb-ray-"
RAY_SOCKET_TAIL = "/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store"  # widest pid: pid_max 2^22
AF_UNIX_MAX = 107
JOB_TAG_MAX = 12  # digits of the longest scheduler job number we allow for


def ray_socket_path_length(temp_dir: str) -> int:
    """The longest socket path Ray will build under the job's temp dir."""
    return len(f"{temp_dir.rstrip('/')}/{RAY_DIR_PREFIX}{'9' * JOB_TAG_MAX}{RAY_SOCKET_TAIL}".encode())


def check_ray_temp_dir(temp_dir: str) -> None:
    """Refuse a temp dir under which Ray could not create its sockets (it fails at start-up, on the node)."""
    worst = ray_socket_path_length(temp_dir)
    if worst > AF_UNIX_MAX:
        room = AF_UNIX_MAX - ray_socket_path_length("")
        raise ValueError(f"{temp_dir!r} is too long for Ray's socket paths ({worst} bytes in the worst case, "
                         f"the limit is {AF_UNIX_MAX}): use a folder of at most {room} characters, e.g. /tmp")
