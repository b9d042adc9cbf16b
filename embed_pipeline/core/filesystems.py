"""What kind of filesystem a path is on: SQLite (the LLM answer cache, the embedding cache) is not safe on a network
filesystem shared between machines, such as a cluster's ReadWriteMany volume."""

from __future__ import annotations

from pathlib import Path

# Filesystems where SQLite's locking (and WAL's shared memory) cannot be trusted: a Kubernetes ReadWriteMany volume
# is usually one of these (NFS, EFS, CephFS, Azure Files, GCS/S3 FUSE mounts).
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "gpfs", "beegfs", "9p", "afs",
     "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs", "fuse.glusterfs", "fuse.cephfs", "fuse.lustre"}
)  # fmt: skip


def filesystem_type(path: Path, mounts: str | None = None) -> str:
    """The type of the filesystem ``path`` is on (the longest mount point above it in /proc/mounts), or ''."""
    try:
        table = mounts if mounts is not None else Path("/proc/mounts").read_text(encoding="utf-8")
    except OSError:
        return ""
    target = str(Path(path).resolve())
    best, kind = "", ""
    for line in table.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best, kind = point, parts[2]
    return kind


def on_network_filesystem(path: Path) -> str:
    """The network filesystem type ``path`` is on (e.g. 'nfs4'; any FUSE mount counts: most are remote), or '' when
    it is local (or unknown)."""
    kind = filesystem_type(path)
    return kind if kind in NETWORK_FILESYSTEMS or kind.startswith("fuse.") else ""
