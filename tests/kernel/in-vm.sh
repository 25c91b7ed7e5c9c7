#!/bin/sh
# Runs inside the VM that run-v2.sh boots: on cgroup v2, the cgroup tests, the
# whole course played with every check, and the cgroup lesson's raw commands
# run by hand.
# $1: a directory that writes through to the host; the rest goes to pytest.
results=$1
shift
# virtme-ng gives the VM an overlayfs /tmp (a writable layer over the shared
# host root), and the kernel refuses an overlayfs as the upper layer of
# another overlay mount (EINVAL), which every container root needs. /var/tmp
# is a plain tmpfs in the VM: the tests' state and tmp_path go there.
export TMPDIR=/var/tmp
echo "in-vm: kernel $(uname -r), /sys/fs/cgroup is $(stat -f -c %T /sys/fs/cgroup)," \
  "/run is $(stat -f -c %T /run), TMPDIR is $(stat -f -c %T "$TMPDIR")"
# virtme-ng's /etc/shadow in the VM is a world-readable copy; on any real
# system it is root-only, which the rootless lesson shows (an unprivileged
# user cannot read it). Only the VM's own copy changes.
ls -l /etc/shadow
chmod 0640 /etc/shadow
# Emulated without KVM, the whole course takes several times as long as on
# the host: give `play --all` up to 20 minutes (run-v2.sh's timeout is above).
export JAILSHELL_TEST_PLAY_TIMEOUT=1200
# CI=true: a test that would skip must fail instead. JAILSHELL_EXPECT_CGROUP:
# the detection test fails if this VM is not pure v2 after all.
rc=0
CI=true JAILSHELL_EXPECT_CGROUP=v2 PYTHONDONTWRITEBYTECODE=1 \
  .venv/bin/python -m pytest -p no:cacheprovider -q -rs --durations=5 \
  tests/test_cgroups.py \
  tests/test_course.py::test_play_all_check_passes_and_leaves_the_host_clean \
  tests/test_course_labs.py::test_cgroup_lines_by_hand_limit_the_same \
  --junitxml="$results/junit.xml" "$@" || rc=$?
echo "$rc" > "$results/rc"
exit "$rc"
