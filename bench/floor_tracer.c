/* The floor of agentd's design: a ptrace + seccomp-bpf tracer that only continues each stop.
 *
 * Usage: floor_tracer NR[,NR...] -- CMD [ARGS...]
 *
 * The child stops itself, is seized with the same options agentd uses (TRACESECCOMP, TRACEFORK,
 * TRACEVFORK, TRACECLONE, TRACEEXEC, EXITKILL), installs a filter that checks the architecture
 * and returns SECCOMP_RET_TRACE for the given syscall numbers (agentd's traced set, passed by
 * bench/run_bench.py) and ALLOW for the rest, then execs CMD. The parent runs one blocking
 * waitpid(-1, __WALL) loop and resumes every stop at once: no registers, no memory, no decision.
 * Whatever agentd costs above this program is the price of Python, decoding, deciding and
 * recording. Exit status: CMD's own, 128+N after signal N.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_TRACED 512

static int parse_numbers(const char *text, unsigned int *out, int max) {
    int count = 0;
    const char *p = text;
    while (*p && count < max) {
        char *end;
        unsigned long nr = strtoul(p, &end, 10);
        if (end == p) return -1;
        out[count++] = (unsigned int)nr;
        p = (*end == ',') ? end + 1 : end;
    }
    return count;
}

static int install_filter(const unsigned int *nrs, int count) {
    /* arch check (2) + load nr (1) + x32 check (1) + one JEQ per number + ALLOW + TRACE + KILL */
    struct sock_filter prog[MAX_TRACED + 8];
    int n = 0;
    prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
    prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
    prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    for (int i = 0; i < count; i++) {
        /* match -> jump to TRACE, which sits after the remaining JEQs and the ALLOW */
        int remaining = count - i - 1;
        prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nrs[i], remaining + 1, 0);
    }
    prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRACE);
    struct sock_fprog fprog = {.len = (unsigned short)n, .filter = prog};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog);
}

int main(int argc, char **argv) {
    unsigned int nrs[MAX_TRACED];
    if (argc < 4 || strcmp(argv[2], "--") != 0) {
        fprintf(stderr, "usage: %s NR[,NR...] -- CMD [ARGS...]\n", argv[0]);
        return 2;
    }
    int count = parse_numbers(argv[1], nrs, MAX_TRACED);
    if (count < 0) {
        fprintf(stderr, "floor_tracer: bad syscall list\n");
        return 2;
    }
    pid_t root = fork();
    if (root < 0) { perror("fork"); return 125; }
    if (root == 0) {
        raise(SIGSTOP); /* the parent seizes us while we are stopped */
        if (install_filter(nrs, count) != 0) { perror("floor_tracer: seccomp"); _exit(126); }
        execvp(argv[3], argv + 3);
        perror("floor_tracer: exec");
        _exit(127);
    }
    int status;
    if (waitpid(root, &status, WUNTRACED) < 0 || !WIFSTOPPED(status)) { perror("waitpid"); return 125; }
    long options = PTRACE_O_TRACESECCOMP | PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK
                   | PTRACE_O_TRACECLONE | PTRACE_O_TRACEEXEC | PTRACE_O_EXITKILL;
    if (ptrace(PTRACE_SEIZE, root, 0, options) != 0) { perror("PTRACE_SEIZE"); return 125; }
    kill(root, SIGCONT);
    int root_status = 0;
    for (;;) {
        pid_t tid = waitpid(-1, &status, __WALL);
        if (tid < 0) {
            if (errno == EINTR) continue;
            break; /* ECHILD: nothing left */
        }
        if (WIFEXITED(status) || WIFSIGNALED(status)) {
            if (tid == root) root_status = status;
            continue;
        }
        if (!WIFSTOPPED(status)) continue;
        int sig = WSTOPSIG(status);
        int event = status >> 16;
        if (event == PTRACE_EVENT_STOP) {
            /* a group-stop stays stopped (LISTEN); the seize's first stops and SIGCONT go on */
            if (sig == SIGSTOP || sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU)
                ptrace(PTRACE_LISTEN, tid, 0, 0);
            else
                ptrace(PTRACE_CONT, tid, 0, 0);
        } else if (event != 0) {
            ptrace(PTRACE_CONT, tid, 0, 0); /* seccomp, fork, vfork, clone, exec */
        } else {
            ptrace(PTRACE_CONT, tid, 0, sig); /* signal-delivery-stop: re-inject */
        }
    }
    if (WIFSIGNALED(root_status)) return 128 + WTERMSIG(root_status);
    return WEXITSTATUS(root_status);
}
