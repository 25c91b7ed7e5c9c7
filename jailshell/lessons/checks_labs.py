"""Checks for the later lessons: containers' lifecycle, escapes and their fixes,
cgroup limits, networking and image layers.

Like every check (jailshell.lessons.checks), each reads the kernel — /proc of
a container's PID 1, what a command inside the jail can reach, cgroup files,
interfaces — so it fails when the kernel disagrees with what a step claims.
A container's exit code is the wait status its supervisor got from the
kernel; its log is what its PID 1 wrote to its stdout pipe.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import time
from typing import TYPE_CHECKING

from jailshell.lessons.checks import CheckRegistry, Verdict, _read

if TYPE_CHECKING:
    from jailshell.engine.containers import Record
    from jailshell.engine.jail import Jail

CAP_SYS_ADMIN = 21
# Seconds a check waits for a signalled container to be reaped.
EXIT_WAIT = 3.0


def register(reg: CheckRegistry) -> None:
    """Add the checks of lessons 7-11 to the registry."""
    _containers(reg)
    _escapes(reg)
    _cgroups(reg)
    _network(reg)
    _images(reg)


# -- containers (lesson 9) -----------------------------------------------------------------


def _record(name: str) -> Record | None:
    from jailshell.engine import containers
    from jailshell.errors import JailshellError

    try:
        return containers.resolve(name)
    except JailshellError:
        return None


def _pid1_alive(rec: Record) -> tuple[bool, str]:
    """Whether the container's PID 1 is a live process in a PID namespace of its own."""
    from jailshell.engine.containers import running

    if not rec.pid or not running(int(rec.pid), rec.starttime):
        return False, f"no live process for PID {rec.pid}" if rec.pid else "it never started a process"
    for line in _read(f"/proc/{rec.pid}/status").splitlines():
        if line.startswith("NSpid:"):
            ids = line.split()[1:]
            return ids[-1] == "1" and len(ids) > 1, f"PID {ids[0]} on the host, {ids[-1]} inside"
    return False, f"PID {rec.pid} is gone"


def _containers(reg: CheckRegistry) -> None:
    @reg.register("container-state", "the container NAME is running (its PID 1 is alive), exited (its "
                  "process is gone, the container kept) or gone (removed: no record, no process)",
                  ("name", "state"), (None, ("running", "exited", "gone")))
    def container_state(jail: Jail, name: str, state: str) -> Verdict:
        rec = _record(name)
        if rec is None:
            return Verdict(state == "gone", f"{name}: no such container")
        alive, detail = _pid1_alive(rec)
        actual = "running" if alive else "exited"
        return Verdict(actual == state, f"{name}: {actual} ({detail})")

    @reg.register("container-exit", "the container NAME has exited with status CODE (137 = killed by SIGKILL)",
                  ("name", "code"))
    def container_exit(jail: Jail, name: str, code: str) -> Verdict:
        # `docker kill` returns once the signal is sent, as docker's does: the
        # process dies and its supervisor records the wait status a moment later.
        deadline = time.monotonic() + EXIT_WAIT
        while True:
            rec = _record(name)
            if rec is None:
                return Verdict(False, f"{name}: no such container")
            alive, detail = _pid1_alive(rec)
            if (not alive and rec.exit_code is not None) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if alive:
            return Verdict(False, f"{name} is still running ({detail})")
        return Verdict(str(rec.exit_code) == code, f"{name} exited with status {rec.exit_code}")

    @reg.register("container-log", "what the container NAME printed contains a line with TEXT",
                  ("name", "text"), rest=True)
    def container_log(jail: Jail, name: str, words: list[str]) -> Verdict:
        text = " ".join(words)
        rec = _record(name)
        if rec is None:
            return Verdict(False, f"{name}: no such container")
        lines = []
        for raw in _read(str(rec.layout.log)).splitlines():
            try:
                lines.append(str(json.loads(raw).get("log", "")).rstrip("\n"))
            except ValueError:
                continue
        found = any(text in line for line in lines)
        return Verdict(found, f"{name} printed {len(lines)} lines" + (f", one with '{text}'" if found else
                                                                       f", none with '{text}'"))

    @reg.register("container-file", "PATH inside the running container NAME holds TEXT (read through the "
                  "kernel's /proc/PID/root of its PID 1)", ("name", "path", "text"), rest=True)
    def container_file(jail: Jail, name: str, path: str, words: list[str]) -> Verdict:
        rec = _record(name)
        if rec is None:
            return Verdict(False, f"{name}: no such container")
        alive, detail = _pid1_alive(rec)
        if not alive:
            return Verdict(False, f"{name} is not running ({detail})")
        content = _read(f"/proc/{rec.pid}/root/{path.lstrip('/')}")
        text = " ".join(words)
        return Verdict(text in content, f"{path} in {name}: " + (repr(content.strip()[:60]) if content else "absent"))

    @reg.register("host-file", "the host's file PATH (a volume's source) holds TEXT", ("path", "text"), rest=True)
    def host_file(jail: Jail, path: str, words: list[str]) -> Verdict:
        content, text = _read(path), " ".join(words)
        return Verdict(text in content, f"{path} on the host: " + (repr(content.strip()[:60]) if content
                                                                    else "absent"))


# -- escapes (lesson 11) -------------------------------------------------------------------


def _outside(proc: str) -> str:
    """A shell line that sets $p to the first ancestor of the shell, seen
    through the proc mounted at PROC, whose root is not the jail's / — a
    process outside the jail (field 4 of stat is the parent's PID, 0 when the
    parent is outside the PID namespace that proc belongs to). The lesson
    shows the same loop."""
    return (f"p=self; while read -r pid comm state p rest < {proc}/$p/stat && [ {proc}/$p/root/ -ef / ]; "
            "do :; done; ")


def _host_listing() -> set[str]:
    return set(os.listdir("/"))


def _reaches_host(jail: Jail, listing: list[str]) -> bool:
    """The listing is the host's / (every top-level entry of the host's root),
    not the jail's own root."""
    seen = set(listing) - {".", ".."}
    return bool(seen) and _host_listing() <= seen and not seen <= set(os.listdir(jail.root_dir)) | {".jsh-escape"}


def _escapes(reg: CheckRegistry) -> None:
    def via_proc(jail: Jail, proc: str, then: str) -> tuple[bool, str]:
        script = _outside(proc) + then
        res = jail.exec(["sh", "-c", script], timeout=10)
        listing = res.stdout.split()
        reached = res.returncode == 0 and _reaches_host(jail, listing)
        shown = ", ".join(x for x in listing if x not in (".", ".."))[:80]
        why = res.stderr.strip().splitlines()[-1:] if res.stderr.strip() else []
        return reached, (f"listed the host's / ({shown}, ...)" if reached else
                         f"did not reach the host's / ({why[0][:90] if why else 'listed: ' + (shown or 'nothing')})")

    @reg.register("host-proc-escape", "through the proc mounted at PROC in the jail, the root link of the "
                  "first ancestor outside the jail reaches (works) / does not reach (fails) the host's /",
                  ("result", "proc"), (("works", "fails"), None))
    def host_proc_escape(jail: Jail, result: str, proc: str) -> Verdict:
        reached, detail = via_proc(jail, proc, f"ls -a {shlex.quote(proc)}/$p/root/")
        return Verdict(reached == (result == "works"), detail)

    @reg.register("nsenter-host", "with the proc mounted at PROC, a root process in the jail can (works) or "
                  "cannot (fails) enter the host's mount namespace with nsenter (needs CAP_SYS_ADMIN over it)",
                  ("result", "proc"), (("works", "fails"), None))
    def nsenter_host(jail: Jail, result: str, proc: str) -> Verdict:
        reached, detail = via_proc(jail, proc, f"nsenter --mount={shlex.quote(proc)}/$p/ns/mnt ls -a /")
        return Verdict(reached == (result == "works"), detail)

    @reg.register("caps-over-host", "root in the jail holds CAP_SYS_ADMIN over the host's namespaces (all), or "
                  "not (none: no such capability, or only inside a user namespace of its own)",
                  ("which",), (("all", "none"),))
    def caps_over_host(jail: Jail, which: str) -> Verdict:
        from jailshell.engine.namespaces import ns_inode

        eff = 0
        for line in _read(f"/proc/{jail.pid}/status").splitlines():
            if line.startswith("CapEff:"):
                eff = int(line.split()[1], 16)
        own_userns = ns_inode(jail.pid, "user") != ns_inode(os.getpid(), "user")
        admin = bool(eff >> CAP_SYS_ADMIN & 1)
        over_host = admin and not own_userns
        detail = f"CapEff {eff:x}: CAP_SYS_ADMIN {'set' if admin else 'not set'}" + (
            ", in a user namespace of its own (it counts there only)" if own_userns else
            ", in the host's user namespace")
        return Verdict(over_host == (which == "all"), detail)


# -- cgroups (lesson 7) --------------------------------------------------------------------

COUNTERS = {"oom-kills": "oom_kill", "forks-refused": "pids_denied", "throttled": "nr_throttled"}
LIMIT_KINDS = ("memory", "pids", "cpu")


def _cgroup_lines(pid: int) -> list[tuple[str, str]]:
    """(controllers, path) per hierarchy PID is in, from /proc/PID/cgroup: one
    line "0::PATH" on v2, one per v1 hierarchy ("4:memory:PATH"), both on hybrid."""
    out = []
    for line in _read(f"/proc/{pid}/cgroup").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out.append((parts[1], parts[2]))
    return out


def _cgroups(reg: CheckRegistry) -> None:
    @reg.register("cgroup-joined", "the jail's PID 1 is in the jail's own cgroup in every hierarchy that has "
                  "a controller jailshell uses (memory, pids, cpu), as /proc/PID/cgroup says")
    def cgroup_joined(jail: Jail) -> Verdict:
        cg = jail.cgroup
        if cg is None:
            return Verdict(False, "the jail has no cgroup of its own")
        lines = _cgroup_lines(jail.pid)
        want = [c for c in ("memory", "pids", "cpu") if c in cg.controllers]
        missing = []
        for ctrl in want:
            v1 = [path for ctrls, path in lines if ctrl in ctrls.split(",")]
            path = v1[0] if v1 else next((p for c, p in lines if c == ""), "")
            if not path.endswith("/" + cg.name):
                missing.append(f"{ctrl} ({path or 'none'})")
        return Verdict(not missing, f"PID {jail.pid}: " + (f"not in {cg.name} for " + ", ".join(missing) if missing
                                                          else f"in {cg.name} for " + ", ".join(want)))

    @reg.register("cgroup-limit", "the kernel's limit file of the jail's cgroup says KIND (memory, pids, cpu) is "
                  "at most VALUE (64M, 20, 0.5)", ("kind", "value"), (LIMIT_KINDS, None))
    def cgroup_limit(jail: Jail, kind: str, value: str) -> Verdict:
        from jailshell.engine.cgroup_limits import parse_limits

        cg = jail.cgroup
        if cg is None:
            return Verdict(False, "the jail has no cgroup of its own")
        want = parse_limits(f"{kind}={value}")
        st = cg.stats()
        have: object = {"memory": st.memory_max, "pids": st.pids_max, "cpu": st.cpu_max}[kind]
        wanted: object = {"memory": want.memory, "pids": want.pids, "cpu": want.cpus}[kind]
        ok = isinstance(have, (int, float)) and isinstance(wanted, (int, float)) and abs(have - wanted) < 1e-6 * max(
            1.0, float(wanted))
        src = st.sources.get({"memory": "memory_max", "pids": "pids_max", "cpu": "cpu_max"}[kind], "?")
        return Verdict(ok, f"{kind} limit {have} (from {src})")

    @reg.register("cgroup-counter", "the kernel counter COUNTER of the jail's cgroup is at least N: oom-kills "
                  "(memory.events oom_kill), forks-refused (pids.events max), throttled (cpu.stat nr_throttled)",
                  ("counter", "n"), (tuple(COUNTERS), None))
    def cgroup_counter(jail: Jail, counter: str, n: str) -> Verdict:
        cg = jail.cgroup
        if cg is None:
            return Verdict(False, "the jail has no cgroup of its own")
        st = cg.stats()
        field = COUNTERS[counter]
        value = getattr(st, field)
        if value is None:
            return Verdict(False, f"{counter}: this kernel has no such counter here")
        return Verdict(int(value) >= int(n), f"{counter}: {value} (from {st.sources.get(field, '?')})")


# -- networking (lesson 8) -----------------------------------------------------------------


def _in_netns(jail: Jail, argv: list[str], timeout: float = 10) -> subprocess.CompletedProcess[str]:
    """A host tool (ip, ping) run in the jail's network namespace only, as
    `nsenter --net=/proc/PID/ns/net` does: the jail's root may not have it."""
    return subprocess.run(["nsenter", f"--net=/proc/{jail.pid}/ns/net", *argv], capture_output=True, text=True,
                          timeout=timeout, check=False)


def _jail_ifaces(jail: Jail) -> list[str]:
    """Interface names of the jail's network namespace, from /proc/PID/net/dev
    (which shows the namespace of that process, not the reader's)."""
    lines = _read(f"/proc/{jail.pid}/net/dev").splitlines()[2:]
    return [line.split(":", 1)[0].strip() for line in lines if ":" in line]


def _ipv4(out: str) -> str | None:
    """The local address of `ip -4 -o addr` output: the word after "inet"
    ("inet 10.199.0.1 peer 10.199.0.2/32" on a point-to-point link)."""
    words = out.split()
    for i, word in enumerate(words[:-1]):
        if word == "inet":
            return words[i + 1].split("/")[0]
    return None


def _jail_side(jail: Jail, iface: str = "eth0") -> tuple[str | None, str | None]:
    """The jail's IPv4 address on IFACE, and the host's interface at the other
    end of that veth (from the peer ifindex the kernel reports as eth0@ifN)."""
    addr = _ipv4(_in_netns(jail, ["ip", "-4", "-o", "addr", "show", "dev", iface]).stdout)
    link = _in_netns(jail, ["ip", "-o", "link", "show", "dev", iface]).stdout
    peer = None
    if "@if" in link:
        index = link.split("@if", 1)[1].split(":", 1)[0]
        for name in os.listdir("/sys/class/net"):
            if _read(f"/sys/class/net/{name}/ifindex").strip() == index:
                peer = name
    return addr, peer


def _host_addr(iface: str) -> str | None:
    """The IPv4 address of a host interface, or of the bridge it is a port of."""
    master = os.path.realpath(f"/sys/class/net/{iface}/master") if os.path.exists(
        f"/sys/class/net/{iface}/master") else None
    name = os.path.basename(master) if master else iface
    res = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", name], capture_output=True, text=True, check=False)
    return _ipv4(res.stdout)


def _network(reg: CheckRegistry) -> None:
    @reg.register("jail-iface", "the jail's network namespace has an interface NAME (from /proc/PID/net/dev), "
                  "and it is one end of a veth whose other end is on the host", ("name",))
    def jail_iface(jail: Jail, name: str) -> Verdict:
        names = _jail_ifaces(jail)
        if name not in names:
            return Verdict(False, "interfaces in the jail: " + ", ".join(names))
        _addr, peer = _jail_side(jail, name)
        return Verdict(peer is not None, f"{name} in the jail, its peer on the host: {peer or 'none'}")

    @reg.register("ping-both-ways", "the host reaches the jail's eth0 address and the jail reaches the host's end "
                  "(one ICMP echo each way, 2 s at most)")
    def ping_both_ways(jail: Jail) -> Verdict:
        addr, peer = _jail_side(jail)
        host = _host_addr(peer) if peer else None
        if not addr or not host:
            return Verdict(False, f"addresses: jail {addr or 'none'}, host end {host or 'none'}")
        out = subprocess.run(["ping", "-c", "1", "-W", "2", addr], capture_output=True, check=False).returncode
        back = _in_netns(jail, ["ping", "-c", "1", "-W", "2", host]).returncode
        return Verdict(out == 0 and back == 0, f"host -> {addr}: {'reply' if out == 0 else 'no reply'}; "
                                               f"jail -> {host}: {'reply' if back == 0 else 'no reply'}")

    @reg.register("on-bridge", "the host end of the jail's veth is a port of the bridge BRIDGE", ("bridge",))
    def on_bridge(jail: Jail, bridge: str) -> Verdict:
        _addr, peer = _jail_side(jail)
        if peer is None:
            return Verdict(False, "the jail has no veth to the host")
        link = f"/sys/class/net/{peer}/master"
        master = os.path.basename(os.path.realpath(link)) if os.path.exists(link) else None
        is_bridge = master is not None and os.path.isdir(f"/sys/class/net/{master}/bridge")
        return Verdict(master == bridge and is_bridge, f"{peer}: " + (f"a port of {master}" if master
                                                                       else "not on a bridge"))

    @reg.register("nat-out", "the jail can reach beyond the host: a default route in the jail, ip_forward=1 on the "
                  "host, and a masquerade rule for the jail's address in the host's ruleset")
    def nat_out(jail: Jail) -> Verdict:
        addr, _peer = _jail_side(jail)
        route = _in_netns(jail, ["ip", "-4", "route", "show", "default"]).stdout.strip()
        forward = _read("/proc/sys/net/ipv4/ip_forward").strip()
        rules = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=False).stdout
        if "masquerade" not in rules:
            rules += subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True,
                                    check=False).stdout
        masq = any("masquerade" in line.lower() and addr is not None and addr in line for line in rules.splitlines())
        return Verdict(bool(route) and forward == "1" and masq,
                       f"default route: {route or 'none'}; ip_forward={forward}; masquerade for {addr}: "
                       f"{'yes' if masq else 'no'}")

    @reg.register("published", "a TCP connection to the host's port PORT (127.0.0.1) gets an HTTP answer from the "
                  "jail holding TEXT", ("port", "text"), rest=True)
    def published(jail: Jail, port: str, words: list[str]) -> Verdict:
        text = " ".join(words)
        try:
            with socket.create_connection(("127.0.0.1", int(port)), timeout=3) as conn:
                conn.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
                data = b""
                while len(data) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
        except (OSError, ValueError) as exc:
            return Verdict(False, f"127.0.0.1:{port}: {exc}")
        body = data.decode("utf-8", "replace")
        first = body.splitlines()[0] if body else "nothing"
        return Verdict(text in body, f"127.0.0.1:{port} answered: {first[:60]}")


# -- image layers (lesson 10) --------------------------------------------------------------


def _overlay_of(jail: Jail, *, as_root: bool = False) -> dict[str, str] | None:
    """The super options (lowerdir, upperdir, workdir) of the jail's overlay,
    from the jail's own /proc/PID/mountinfo. as_root: only once it is the
    jail's / (mountinfo shows paths from the process's root: "/" after chroot
    or pivot_root, the host path of the root filesystem before)."""
    found = None
    targets = ("/",) if as_root else ("/", str(jail.rootfs))
    for line in _read(f"/proc/{jail.pid}/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        target, fields = left.split()[4], right.split()
        if len(fields) >= 3 and fields[0] == "overlay" and target in targets:
            opts = {}
            for opt in fields[2].split(","):
                key, _, value = opt.partition("=")
                opts[key] = value.replace("\\040", " ").replace("\\054", ",")
            found = opts
    return found


def _tar_names(path: str) -> set[str] | None:
    import tarfile

    try:
        with tarfile.open(path) as tar:
            return {n.removeprefix("./").strip("/") for n in tar.getnames()}
    except (OSError, tarfile.TarError):
        return None


def _images(reg: CheckRegistry) -> None:
    @reg.register("overlay-root", "the jail's root is an overlay mount: read-only image layers (lowerdir) under "
                  "a writable layer of its own (upperdir)")
    def overlay_root(jail: Jail) -> Verdict:
        opts = _overlay_of(jail, as_root=True)
        if opts is None:
            return Verdict(False, "the jail's / is not an overlay mount")
        lower, upper = opts.get("lowerdir", ""), opts.get("upperdir", "")
        return Verdict(bool(lower and upper), f"lowerdir={lower or '?'} upperdir={upper or '?'}")

    @reg.register("whiteout", "PATH was deleted in the jail: the overlay's upper layer holds a whiteout (a 0/0 "
                  "character device) for it, the image's layer still has it, the jail no longer sees it", ("path",))
    def whiteout(jail: Jail, path: str) -> Verdict:
        import stat

        opts = _overlay_of(jail)
        if opts is None:
            return Verdict(False, "the jail's root is not an overlay mount")
        rel = path.strip("/")
        try:
            st = os.lstat(os.path.join(opts.get("upperdir", ""), rel))
            is_whiteout = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
        except OSError:
            is_whiteout = False
        # The lowers top first (an image's layers, or its flattened root): the
        # first that holds PATH decides, and a whiteout there means a higher
        # layer of the image itself removed it.
        in_lower = False
        for d in (d for d in opts.get("lowerdir", "").split(":") if d):
            try:
                lst = os.lstat(os.path.join(d, rel))
            except OSError:
                continue
            in_lower = not (stat.S_ISCHR(lst.st_mode) and lst.st_rdev == 0)
            break
        seen = os.path.lexists(f"/proc/{jail.pid}/root/{rel}")
        return Verdict(is_whiteout and in_lower and not seen,
                       f"upper: {'whiteout' if is_whiteout else 'no whiteout'}; image layer: "
                       f"{'has it' if in_lower else 'does not have it'}; the jail: {'sees it' if seen else 'does not'}")

    @reg.register("export-vs-save", "EXPORT (docker export) is one flat tree without PATH and without whiteouts; "
                  "SAVE (docker save) holds layers, the image's with PATH and the jail's with its .wh. whiteout",
                  ("export", "save", "path"))
    def export_vs_save(jail: Jail, export: str, save: str, path: str) -> Verdict:
        import tarfile

        rel = path.strip("/")
        flat = _tar_names(export)
        if flat is None:
            return Verdict(False, f"{export}: not a readable tar")
        flat_ok = rel not in flat and not any("/.wh." in f"/{n}" for n in flat)
        layers: list[set[str]] = []
        try:
            with tarfile.open(save) as tar:
                manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
                for member in manifest[0]["Layers"]:
                    with tarfile.open(fileobj=tar.extractfile(member)) as layer:
                        layers.append({n.removeprefix("./").strip("/") for n in layer.getnames()})
        except (OSError, tarfile.TarError, KeyError, ValueError, TypeError, IndexError) as exc:
            return Verdict(False, f"{save}: not a docker save tarball ({exc})")
        head, _, name = rel.rpartition("/")
        wh = f"{head}/.wh.{name}" if head else f".wh.{name}"
        save_ok = len(layers) >= 2 and rel in layers[0] and wh in layers[-1]
        return Verdict(flat_ok and save_ok,
                       f"export: {len(flat)} entries, {rel} {'absent' if rel not in flat else 'present'}; save: "
                       f"{len(layers)} layers, top one {'with' if layers and wh in layers[-1] else 'without'} {wh}")
