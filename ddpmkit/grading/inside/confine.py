"""Confinement of one run, applied before any of a notebook's code: rlimits, private
namespaces with their own RAM disks and /dev, no descriptor but the run's own, and a seccomp
filter that refuses new processes, namespaces, mounts and unbounded shared memory."""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import struct

NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET = 0x20000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000
NEW_NAMESPACES = NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
NOSUID, NODEV, NOEXEC, BIND, MOVE, REC, PRIVATE = 2, 4, 8, 4096, 8192, 16384, 1 << 18
DEVICES = ("null", "zero", "full", "random", "urandom")  # what Python, NumPy and PyTorch open in /dev
MAX_FILES = 256  # open descriptors of one run

# Refused with EPERM: new programs, namespaces and mounts, other processes' memory, and the two
# routes to memory that neither the address-space limit nor a RAM disk's size bounds.
DENIED = ("fork", "vfork", "execve", "execveat", "unshare", "setns", "mount", "umount2", "pivot_root", "chroot",
          "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "memfd_create", "shmget",
          "ptrace", "process_vm_readv", "process_vm_writev", "userfaultfd", "bpf", "perf_event_open", "keyctl", "add_key",
          "request_key")
SYSCALLS = {  # audit architecture, and the numbers of the calls the filter looks at
    "x86_64": (0xC000003E, {"fork": 57, "vfork": 58, "execve": 59, "execveat": 322, "unshare": 272, "setns": 308, "mount": 165,
                            "umount2": 166, "pivot_root": 155, "chroot": 161, "memfd_create": 319, "shmget": 29, "ptrace": 101,
                            "process_vm_readv": 310, "process_vm_writev": 311, "userfaultfd": 323, "bpf": 321, "perf_event_open": 298,
                            "keyctl": 250, "add_key": 248, "request_key": 249, "clone": 56, "clone3": 435}),
    "aarch64": (0xC00000B7, {"execve": 221, "execveat": 281, "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41,
                             "chroot": 51, "memfd_create": 279, "shmget": 194, "ptrace": 117, "process_vm_readv": 270,
                             "process_vm_writev": 271, "userfaultfd": 282, "bpf": 280, "perf_event_open": 241, "keyctl": 219,
                             "add_key": 217, "request_key": 218, "clone": 220, "clone3": 435}),
}
NEW_MOUNT_API = {"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442}


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def seccomp_program(arch: str) -> list[tuple[int, int, int, int]]:
    """The BPF program: 1. another ABI (x32 included) is killed; 2. the ``DENIED`` calls fail
    with EPERM; 3. clone3 says ENOSYS (glibc falls back to clone); 4. clone is allowed only for
    a thread (CLONE_THREAD) that asks for no new namespace; 5. everything else is allowed."""
    if arch not in SYSCALLS:
        raise OSError(f"no seccomp filter for {arch}")
    audit, nr = SYSCALLS[arch]
    nr = {**NEW_MOUNT_API, **nr}
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, JGE|K, JSET|K, BPF_RET|K
    ALLOW, KILL, EPERM, ENOSYS = 0x7FFF0000, 0x80000000, 0x00050001, 0x00050026
    prog = [(LD, 0, 0, 4), (JEQ, 1, 0, audit), (RET, 0, 0, KILL), (LD, 0, 0, 0)]  # 1. the architecture, then the number
    if arch == "x86_64":
        prog += [(JGE, 0, 1, 0x40000000), (RET, 0, 0, KILL)]  # x32 calls carry bit 30
    for name in DENIED:  # 2.
        if name in nr:
            prog += [(JEQ, 0, 1, nr[name]), (RET, 0, 0, EPERM)]
    prog += [(JEQ, 0, 1, nr["clone3"]), (RET, 0, 0, ENOSYS)]  # 3.
    prog += [(JEQ, 0, 5, nr["clone"]), (LD, 0, 0, 16), (JSET, 0, 2, 0x00010000), (JSET, 1, 0, NEW_NAMESPACES),  # 4.
             (RET, 0, 0, ALLOW), (RET, 0, 0, EPERM)]
    return prog + [(RET, 0, 0, ALLOW)]  # 5.


def install_seccomp() -> None:
    """Install ``seccomp_program`` for this process and every thread it starts; the kernel keeps
    it for the life of the process."""
    prog = seccomp_program(platform.machine())
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *ins) for ins in prog))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog), ctypes.addressof(buf))
    libc = _libc()
    _check(libc.prctl(38, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    _check(libc.syscall(317 if platform.machine() == "x86_64" else 277, 1, 1, ctypes.byref(fprog)),  # seccomp(SET_MODE_FILTER, TSYNC)
           "seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC)")


def apply_limits(memory_gb: float, cpu_seconds: int, file_mb: int, nproc: int) -> None:
    """The rlimits of one run (address space, CPU, file size, no core, processes, descriptors)."""
    mem = int(memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_mb << 20, file_mb << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    resource.setrlimit(resource.RLIMIT_NOFILE, (MAX_FILES, MAX_FILES))


def close_other_fds(keep: tuple[int, ...]) -> None:
    """Close every descriptor but ``keep``: a run holds no other run's pipe, and no socket of the zygote's."""
    last = 3
    for fd in sorted(set(keep) | {0, 1, 2}):
        if fd >= last:
            os.closerange(last, fd)
            last = fd + 1
    os.closerange(last, resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _mount(libc, src: bytes | None, dst: str, fstype: bytes | None, flags: int, data: str | None, what: str) -> None:
    _check(libc.mount(src, dst.encode(), fstype, flags, data.encode() if data else None), what)


def _tmpfs(libc, where: str, mb: float, mode: str, extra: int = 0) -> None:
    _mount(libc, b"tmpfs", where, b"tmpfs", NOSUID | NODEV | extra, f"size={max(int(mb * 1024), 4)}k,mode={mode}", f"mount tmpfs {where}")


def private_dev(libc, shm_mb: int) -> None:
    """A /dev of this run's own: the device nodes of ``DEVICES`` bound from the old one, the
    /proc/self/fd links, and a /dev/shm RAM disk of ``shm_mb`` MB, moved over the shared /dev."""
    stage = "/tmp/.dev"
    os.mkdir(stage)
    _tmpfs(libc, stage, 0.25, "0755", NOEXEC)
    for name in DEVICES:
        if os.path.exists(f"/dev/{name}"):
            open(f"{stage}/{name}", "w").close()
            _mount(libc, f"/dev/{name}".encode(), f"{stage}/{name}", None, BIND, None, f"bind /dev/{name}")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{stage}/{name}")
    os.mkdir(f"{stage}/shm")
    _tmpfs(libc, f"{stage}/shm", shm_mb, "1777", NOEXEC)
    _mount(libc, stage.encode(), "/dev", None, MOVE, None, "move the new /dev into place")
    os.rmdir(stage)


def _keep_binds_under_tmp(libc, tmp_mb: int) -> None:
    """A new RAM disk on /tmp; read-only binds that lay under the old one (a virtual environment
    in /tmp/...) are carried over onto it."""
    with open("/proc/self/mountinfo") as f:
        points = {line.split()[4].encode().decode("unicode_escape") for line in f}
    keep = sorted(p for p in points if p.startswith("/tmp/"))
    keep = [p for p in keep if not any(p != o and p.startswith(o + "/") for o in keep)]
    for i, p in enumerate(keep):
        hold = f"/sandbox/.keep{i}"
        os.mkdir(hold) if os.path.isdir(p) else open(hold, "w").close()
        _mount(libc, p.encode(), hold, None, BIND | REC, None, f"bind {p}")
    _tmpfs(libc, "/tmp", tmp_mb, "0700")
    for i, p in enumerate(keep):
        hold = f"/sandbox/.keep{i}"
        if os.path.isdir(hold):
            os.makedirs(p)
        else:
            os.makedirs(os.path.dirname(p), exist_ok=True)
            open(p, "w").close()
        _mount(libc, hold.encode(), p, None, BIND | REC, None, f"bind back {p}")
        _check(libc.umount2(hold.encode(), 2), f"umount {hold}")  # MNT_DETACH
        os.rmdir(hold) if os.path.isdir(hold) else os.unlink(hold)


def enter_private_namespaces(tmp_mb: int, work_mb: int, shm_mb: int) -> None:
    """Give a process forked from the zygote what a fresh bubblewrap gives a run: its own user,
    mount, PID, network and IPC namespaces, new RAM disks of fixed size on /tmp, /sandbox and
    /dev/shm, its own /dev, and a /proc that shows only itself. Returns in a new child, PID 1 of
    its own PID namespace (its parent waits and exits with its status), with no capability left."""
    libc = _libc()
    uid, gid = os.getuid(), os.getgid()
    _check(libc.unshare(NEWUSER | NEWNS | NEWPID | NEWNET | NEWIPC), "unshare")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    _mount(libc, b"none", "/", None, REC | PRIVATE, None, "mount --make-rprivate /")
    _tmpfs(libc, "/sandbox", work_mb, "0700")
    _keep_binds_under_tmp(libc, tmp_mb)
    private_dev(libc, shm_mb)
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the run: wait until its /proc is in place
        os.close(go_w)
        os.read(go_r, 1)
        os.close(go_r)
        libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL: never outlive the parent
        drop_capabilities(libc)
        return
    os.close(go_r)
    _only_own_proc(libc, pid)
    os.write(go_w, b"1")
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    os._exit(128 - code if code < 0 else code)  # killed by signal s: 128 + s, as bubblewrap reports it


def _only_own_proc(libc, pid: int) -> None:
    """/proc with only the run's own entry, as /proc/self."""
    os.mkdir("/tmp/.self")
    _mount(libc, f"/proc/{pid}".encode(), "/tmp/.self", None, BIND | REC, None, "bind /proc/PID")
    _mount(libc, b"tmpfs", "/proc", b"tmpfs", NOSUID | NODEV | NOEXEC, "size=64k,mode=0755", "cover /proc")
    os.mkdir("/proc/self")
    _mount(libc, b"/tmp/.self", "/proc/self", None, BIND | REC, None, "bind /proc/self")
    _check(libc.umount2(b"/tmp/.self", 2), "umount")
    os.rmdir("/tmp/.self")


def drop_capabilities(libc=None) -> None:
    """No capability in any set (the bounding set too)."""
    libc = libc or _libc()
    for cap in range(64):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP until the kernel's last capability
            break

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    data = (Data * 2)()
    _check(libc.capset(ctypes.byref(Header(0x20080522, 0)), data), "capset")
