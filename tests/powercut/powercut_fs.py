#!/usr/bin/env python3
"""A FUSE file system that loses, at a power cut, what was never synced.

Usage: powercut_fs.py IMAGE MOUNTPOINT SEED

The tests mount it under a store, run the program under test, SIGKILL it and
unmount: the unmount is the power cut. The state that survives is written to
IMAGE (a pickle), which the next mount starts from. The model, per POSIX and
what ext4 guarantees:

- A file's content survives as of its last fsync/fdatasync. The writes and
  truncations after it survive only as a prefix chosen at random (seeded),
  the last one of that prefix possibly torn at a random byte: writeback may
  have reached some of them, in order, and none is promised.
- A directory entry (create, mkdir, rename, unlink, rmdir) survives only once
  the directory holding it was fsynced; until then the directory's previous
  synced entries come back, unlinked files included.
- Nothing is reordered within a file beyond that: a later write never
  survives without the earlier unsynced ones (see docs/ROBUSTNESS.md).

Statistics (syncs, cut bytes) are printed to stderr at the cut.
"""

import errno
import os
import pickle
import random
import stat
import sys
import threading
import time

from fuse import FUSE, FuseOSError, Operations


class Node:
    def __init__(self, is_dir, mode):
        self.is_dir = is_dir
        self.mode = mode
        self.mtime = time.time()
        # Files: the current bytes, the synced bytes, and the operations since.
        self.data = bytearray()
        self.synced = b""
        self.pending = []
        # Directories: current and synced entries (name -> Node).
        self.entries = {}
        self.synced_entries = {}


def load(image):
    """The tree an image holds (all of it synced)."""

    def build(tree):
        if isinstance(tree, dict):
            d = Node(True, 0o755)
            for name, sub in tree.items():
                d.entries[name] = build(sub)
            d.synced_entries = dict(d.entries)
            return d
        f = Node(False, 0o644)
        f.data = bytearray(tree)
        f.synced = bytes(tree)
        return f

    if image and os.path.exists(image):
        with open(image, "rb") as fh:
            return build(pickle.load(fh))
    return build({})


class PowerCutFs(Operations):
    def __init__(self, image, seed):
        self.image = image
        self.rng = random.Random(seed)
        self.root = load(image)
        self.mutex = threading.Lock()
        self.fds = {}
        self.next_fd = 1
        self.syncs = 0
        # (unsynced operations, how many of them the cut kept), per file.
        self.kept = []

    # --- the cut -------------------------------------------------------
    def surviving(self, node, seen):
        if node.is_dir:
            return {name: self.surviving(sub, seen) for name, sub in node.synced_entries.items()}
        if id(node) in seen:
            return seen[id(node)]
        data = bytearray(node.synced)
        keep = self.rng.randint(0, len(node.pending))
        if node.pending:
            self.kept.append((len(node.pending), keep))
        for i, op in enumerate(node.pending[:keep]):
            torn = i == keep - 1 and self.rng.random() < 0.5
            if op[0] == "w":
                _, off, buf = op
                if torn:
                    buf = buf[: self.rng.randint(0, len(buf))]
                if off > len(data):
                    data.extend(b"\0" * (off - len(data)))
                data[off : off + len(buf)] = buf
            elif op[1] < len(data):
                del data[op[1] :]
            else:
                data.extend(b"\0" * (op[1] - len(data)))
        seen[id(node)] = bytes(data)
        return seen[id(node)]

    def all_files(self, node, out):
        for sub in list(node.entries.values()) + list(node.synced_entries.values()):
            if sub.is_dir:
                self.all_files(sub, out)
            else:
                out[id(sub)] = sub
        return out

    def destroy(self, path):
        with self.mutex:
            files = self.all_files(self.root, {})
            tree = self.surviving(self.root, {})
            unsynced = sum(len(f.pending) for f in files.values())
            tmp = self.image + ".tmp"
            with open(tmp, "wb") as fh:
                pickle.dump(tree, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.image)
            print(f"powercut: cut after {self.syncs} syncs; {unsynced} unsynced writes in {len(files)} files; "
                  f"kept (of the unsynced operations, how many) per surviving file: {self.kept}",
                  file=sys.stderr, flush=True)

    # --- lookups -------------------------------------------------------
    def lookup(self, path):
        node = self.root
        for part in [p for p in path.split("/") if p]:
            if not node.is_dir or part not in node.entries:
                raise FuseOSError(errno.ENOENT)
            node = node.entries[part]
        return node

    def parent(self, path):
        head, name = os.path.split(path.rstrip("/"))
        d = self.lookup(head or "/")
        if not d.is_dir:
            raise FuseOSError(errno.ENOTDIR)
        return d, name

    # --- metadata ------------------------------------------------------
    def getattr(self, path, fh=None):
        with self.mutex:
            n = self.lookup(path)
            kind = stat.S_IFDIR if n.is_dir else stat.S_IFREG
            size = 4096 if n.is_dir else len(n.data)
            return dict(
                st_mode=kind | n.mode,
                st_nlink=2 if n.is_dir else 1,
                st_size=size,
                st_blocks=(size + 511) // 512,
                st_mtime=n.mtime,
                st_atime=n.mtime,
                st_ctime=n.mtime,
                st_uid=os.getuid(),
                st_gid=os.getgid(),
            )

    def statfs(self, path):
        # 1 GiB, mostly free: the store bounds itself by it.
        return dict(f_bsize=4096, f_frsize=4096, f_blocks=262144, f_bfree=250000, f_bavail=250000,
                    f_files=100000, f_ffree=99000, f_namemax=255)

    def chmod(self, path, mode):
        with self.mutex:
            self.lookup(path).mode = mode & 0o7777
        return 0

    def chown(self, path, uid, gid):
        return 0

    def utimens(self, path, times=None):
        with self.mutex:
            self.lookup(path).mtime = time.time()
        return 0

    def readdir(self, path, fh):
        with self.mutex:
            return [".", ".."] + list(self.lookup(path).entries)

    def opendir(self, path):
        with self.mutex:
            if not self.lookup(path).is_dir:
                raise FuseOSError(errno.ENOTDIR)
        return 0

    # --- namespace -----------------------------------------------------
    def mkdir(self, path, mode):
        with self.mutex:
            d, name = self.parent(path)
            if name in d.entries:
                raise FuseOSError(errno.EEXIST)
            d.entries[name] = Node(True, mode & 0o7777)
        return 0

    def rmdir(self, path):
        with self.mutex:
            d, name = self.parent(path)
            n = d.entries.get(name)
            if n is None:
                raise FuseOSError(errno.ENOENT)
            if n.entries:
                raise FuseOSError(errno.ENOTEMPTY)
            del d.entries[name]
        return 0

    def unlink(self, path):
        with self.mutex:
            d, name = self.parent(path)
            if name not in d.entries:
                raise FuseOSError(errno.ENOENT)
            del d.entries[name]
        return 0

    def rename(self, old, new):
        with self.mutex:
            od, oname = self.parent(old)
            nd, nname = self.parent(new)
            if oname not in od.entries:
                raise FuseOSError(errno.ENOENT)
            nd.entries[nname] = od.entries.pop(oname)
        return 0

    def create(self, path, mode, fi=None):
        with self.mutex:
            d, name = self.parent(path)
            if name not in d.entries:
                d.entries[name] = Node(False, mode & 0o7777)
            return self.open_fd(d.entries[name])

    def open_fd(self, node):
        fd = self.next_fd
        self.next_fd += 1
        self.fds[fd] = node
        return fd

    def open(self, path, flags):
        with self.mutex:
            return self.open_fd(self.lookup(path))

    def release(self, path, fh):
        with self.mutex:
            self.fds.pop(fh, None)
        return 0

    def node(self, path, fh):
        n = self.fds.get(fh) if fh else None
        return n if n is not None else self.lookup(path)

    # --- data ----------------------------------------------------------
    def read(self, path, size, offset, fh):
        with self.mutex:
            n = self.node(path, fh)
            return bytes(n.data[offset : offset + size])

    def write(self, path, data, offset, fh):
        with self.mutex:
            n = self.node(path, fh)
            if offset > len(n.data):
                n.data.extend(b"\0" * (offset - len(n.data)))
            n.data[offset : offset + len(data)] = data
            n.pending.append(("w", offset, bytes(data)))
            n.mtime = time.time()
            return len(data)

    def truncate(self, path, length, fh=None):
        with self.mutex:
            n = self.node(path, fh)
            if length < len(n.data):
                del n.data[length:]
            else:
                n.data.extend(b"\0" * (length - len(n.data)))
            n.pending.append(("t", length))
            n.mtime = time.time()
        return 0

    def flush(self, path, fh):
        return 0

    def fsync(self, path, datasync, fh):
        with self.mutex:
            n = self.node(path, fh)
            n.synced = bytes(n.data)
            n.pending = []
            self.syncs += 1
        return 0

    def fsyncdir(self, path, datasync, fh):
        with self.mutex:
            d = self.lookup(path)
            d.synced_entries = dict(d.entries)
            self.syncs += 1
        return 0


def main():
    image, mountpoint, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    FUSE(PowerCutFs(image, seed), mountpoint, foreground=True, nothreads=True, default_permissions=True)


if __name__ == "__main__":
    main()
