#!/bin/sh
# Runs inside the VM that run-v2.sh boots: the cgroup tests, on cgroup v2.
# $1: a directory that writes through to the host; the rest goes to pytest.
results=$1
shift
echo "in-vm: kernel $(uname -r), /sys/fs/cgroup is $(stat -f -c %T /sys/fs/cgroup)"
# CI=true: a test that would skip must fail instead. JAILSHELL_EXPECT_CGROUP:
# the detection test fails if this VM is not pure v2 after all.
rc=0
CI=true JAILSHELL_EXPECT_CGROUP=v2 PYTHONDONTWRITEBYTECODE=1 \
  .venv/bin/python -m pytest -p no:cacheprovider -q tests/test_cgroups.py \
  --junitxml="$results/junit.xml" "$@" || rc=$?
echo "$rc" > "$results/rc"
exit "$rc"
