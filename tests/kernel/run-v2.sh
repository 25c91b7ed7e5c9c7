#!/usr/bin/env bash
# The cgroup tests, the whole course (`play --all --check`) and the cgroup
# lesson's raw commands on a pure cgroup v2 kernel, in a VM (tests/kernel/in-vm.sh).
#
# Most learners' machines run cgroup v2 only; a machine with a v1/v2 hybrid
# cannot test those code paths. This boots Debian's kernel under qemu with
# virtme-ng: the host's root file system is shared read-only over 9p (with
# writable overlays on /etc /usr /var /tmp /home), so the VM runs this
# checkout with its .venv. Only --rwdir paths write through to the host: the
# project (pytest writes there) and a results directory, through which the
# VM reports its pytest exit status and junit xml.
#
# Installs what it needs, idempotently (as root): qemu, a kernel, kmod,
# busybox-static via apt, and virtme-ng in its own venv (tests/kernel/.venv).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."
project=$PWD

if [ "$(id -u)" != 0 ]; then
  echo "run-v2: needs root (apt-get, and the tests create cgroups)" >&2
  exit 1
fi

pkgs=(qemu-system-x86 linux-image-amd64 kmod busybox-static)
missing=()
for pkg in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "run-v2: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The project venv the VM runs the tests with (scripts/setup also brings python3-venv).
[ -x .venv/bin/python ] || scripts/setup --test >&2

vng_venv=tests/kernel/.venv
vng_version=1.42
if [ "$("$vng_venv/bin/vng" --version 2>/dev/null | awk '{print $NF}')" != "$vng_version" ]; then
  python3 -m venv "$vng_venv"
  "$vng_venv/bin/python" -m pip install -q --disable-pip-version-check "virtme-ng==$vng_version"
fi
# vng starts virtme-run from PATH.
export PATH="$project/$vng_venv/bin:$PATH"

kernel=$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -1)
if [ -z "$kernel" ]; then
  echo "run-v2: no kernel in /boot (apt-get install linux-image-amd64)" >&2
  exit 1
fi

results=$(mktemp -d /tmp/jailshell-v2.XXXXXX)
trap 'rm -rf "$results"' EXIT

echo "run-v2: booting $kernel (software emulation: boot about 30 s, tests about 12 min)" >&2
start=$(date +%s)
# --disable-kvm: KVM is not usable on every CI machine (it fails here with an
# MSR error); emulation is slower but works everywhere. The timeout keeps a
# hung guest from eating the CI budget: the run takes about 12 minutes
# emulated (the course alone about 8), and in-vm.sh gives the course at most 20.
# The guest's console also carries terminal resets and padding bytes; keep
# only printable text so the CI log stays readable.
vm_status=0
{ timeout 1500 vng --run "$kernel" --force-9p --disable-kvm --memory 2G \
    --rwdir "$project" --rwdir "$results" \
    -- tests/kernel/in-vm.sh "$results" "$@" 2>&1 || echo "$?" > "$results/vng-status"; } \
  | LC_ALL=C tr -cd '\11\12\40-\176'
[ -f "$results/vng-status" ] && vm_status=$(cat "$results/vng-status")
echo "run-v2: VM done in $(( $(date +%s) - start )) s" >&2

if [ ! -f "$results/rc" ]; then
  echo "run-v2: the VM did not report a pytest result (vng exit status $vm_status)" >&2
  exit 1
fi
rc=$(cat "$results/rc")
echo "run-v2: pytest in the cgroup v2 VM exited with $rc" >&2
exit "$rc"
