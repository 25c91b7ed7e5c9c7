/* The physical floor: the least work that gives a process its own
 * namespaces and root and runs a program there. One clone() with every
 * namespace flag jailshell uses (mnt, uts, ipc, net, pid, cgroup), chroot
 * into the root, execve the program, wait. No mounts, no proc, no
 * pivot_root: any real container runtime does more than this, so no
 * runtime can be faster than it on this machine.
 *
 *   floor ROOT [CMD ARGS...]          one container, exit with CMD's status
 *   floor -n N ROOT [CMD ARGS...]     N containers in a loop, print each
 *                                     start-to-exit time in ns (no exec of
 *                                     floor itself per container)
 *   floor -p ...                      plain fork+execve: no namespaces, no chroot
 *
 * CMD defaults to /bin/true. Built at benchmark time by bench/floor.py:
 *   cc -O2 -static -o floor floor.c
 */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef CLONE_NEWCGROUP
#define CLONE_NEWCGROUP 0x02000000
#endif

static const int NS_FLAGS = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWCGROUP;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* One container: returns the wait status, or -1 if clone failed. */
static int one(int plain, const char *root, char **cmd) {
    /* The raw syscall with a NULL stack behaves like fork: the child runs on
     * a copy-on-write copy of this stack. glibc's clone() wrapper would need
     * a separate stack, and fork() cannot take namespace flags. */
    long pid = syscall(SYS_clone, (plain ? 0 : NS_FLAGS) | SIGCHLD, NULL, NULL, NULL, NULL);
    if (pid < 0) {
        perror("clone");
        return -1;
    }
    if (pid == 0) {
        if (!plain && (chroot(root) != 0 || chdir("/") != 0)) {
            perror("chroot");
            _exit(126);
        }
        char *envp[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL};
        execve(cmd[0], cmd, envp);
        perror("execve");
        _exit(127);
    }
    int status;
    if (waitpid((pid_t)pid, &status, 0) < 0) {
        perror("waitpid");
        return -1;
    }
    return status;
}

int main(int argc, char **argv) {
    long loops = 0;
    int plain = 0, opt;
    while ((opt = getopt(argc, argv, "+n:p")) != -1) {
        if (opt == 'n')
            loops = strtol(optarg, NULL, 10);
        else if (opt == 'p')
            plain = 1;
        else
            return 2;
    }
    if (optind >= argc) {
        fprintf(stderr, "usage: floor [-p] [-n N] ROOT [CMD ARGS...]\n");
        return 2;
    }
    const char *root = argv[optind];
    char *dflt[] = {"/bin/true", NULL};
    char **cmd = optind + 1 < argc ? &argv[optind + 1] : dflt;

    if (loops <= 0) {
        int status = one(plain, root, cmd);
        if (status < 0)
            return 125;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    for (long i = 0; i < loops; i++) {
        long long t0 = now_ns();
        int status = one(plain, root, cmd);
        long long t1 = now_ns();
        if (status < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "floor: run %ld failed (status %d)\n", i, status);
            return 1;
        }
        printf("%lld\n", t1 - t0);
    }
    return 0;
}
