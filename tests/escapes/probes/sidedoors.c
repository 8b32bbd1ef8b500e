/* sidedoors: foreign ABIs and kernel side doors around a syscall tracer.
 *
 *   sidedoors int80-creat PATH      ia32 open(PATH, O_CREAT|O_WRONLY) through `int $0x80`
 *   sidedoors int80-read PATH       ia32 open + read of PATH, printed (read(2)/write(2) via int80)
 *   sidedoors x32-creat PATH        x86_64 openat with __X32_SYSCALL_BIT set (the x32 ABI)
 *   sidedoors iouring-creat PATH    IORING_OP_OPENAT(PATH, O_CREAT) from the kernel's io_uring
 *   sidedoors iouring-read PATH     IORING_OP_OPENAT + IORING_OP_READ of PATH, printed
 *   sidedoors clone-untraced PATH   clone(CLONE_UNTRACED): the child creates PATH
 *   sidedoors vfork PATH            vfork(): the child creates PATH before it execs or exits
 *   sidedoors clone3 PATH           clone3(): the child creates PATH
 *   sidedoors clone3-untraced PATH  clone3(CLONE_UNTRACED): the child creates PATH
 *   sidedoors daemon PATH           double fork + setsid; the grandchild waits until its
 *                                   parents are gone (300 ms) and creates PATH
 *   sidedoors ptrace-attach PID     PTRACE_ATTACH to PID, then PTRACE_KILL it
 *   sidedoors ptrace-seize PID      PTRACE_SEIZE + PTRACE_INTERRUPT, then PTRACE_KILL
 *   sidedoors kill PID              kill(PID, SIGKILL)       (PID "ppid" = our parent,
 *                                   "-ppid" = our parent's process group)
 *   sidedoors tgkill PID            tgkill(PID, PID, SIGKILL)
 *   sidedoors pidfd-kill PID        pidfd_open(PID) + pidfd_send_signal(SIGKILL)
 *   sidedoors killpg                kill(0, SIGKILL): our whole process group
 *   sidedoors vm-writev PID         process_vm_writev into PID's memory (its environ string)
 *   sidedoors open-tree-read DIR    open_tree(DIR, OPEN_TREE_CLONE): a detached copy of the
 *                                   mount whose descriptor names no path; read DIR/secret in it
 *   sidedoors usernotif-read PATH   install our own seccomp filter with a user-notification
 *                                   listener for openat, answer CONTINUE from a thread (a
 *                                   USER_NOTIF verdict outranks the tracer's TRACE), read PATH
 *
 * Prints what happened; exit status 0 when the door opened, 1 when it was refused.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/io_uring.h>
#include <linux/seccomp.h>
#include <linux/sched.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define X32_SYSCALL_BIT 0x40000000L

static int refused(const char *what)
{
    printf("refused: %s: %s\n", what, strerror(errno));
    return 1;
}

static long int80(long nr, long a, long b, long c)
{
    long ret;
    __asm__ volatile("int $0x80"
                     : "=a"(ret)
                     : "a"(nr), "b"(a), "c"(b), "d"(c)
                     : "memory", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15");
    return (int)ret;
}

/* ia32 pointers are 32 bits: keep the path and buffer in the low 4 GiB. */
static char *low_memory(size_t size)
{
    char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT,
                   -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap(MAP_32BIT)");
        exit(2);
    }
    return p;
}

static int int80_open(const char *path, int flags)
{
    char *low = low_memory(8192);
    strncpy(low, path, 4095);
    long fd = int80(5 /* ia32 open */, (long)(uintptr_t)low, flags, 0644);
    if (fd < 0) {
        errno = (int)-fd;
        return refused("int80 open");
    }
    if (flags == O_RDONLY) {
        long n = int80(3 /* ia32 read */, fd, (long)(uintptr_t)(low + 4096), 4000);
        if (n > 0)
            int80(4 /* ia32 write */, 1, (long)(uintptr_t)(low + 4096), n);
    }
    printf("int80 open: fd %ld\n", fd);
    return 0;
}

static int x32_creat(const char *path)
{
    long fd = syscall(SYS_openat | X32_SYSCALL_BIT, AT_FDCWD, path, O_CREAT | O_WRONLY, 0644);
    if (fd < 0)
        return refused("x32 openat");
    printf("x32 openat: fd %ld\n", fd);
    return 0;
}

struct ring {
    int fd;
    unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
};

static int ring_setup(struct ring *r)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    r->fd = (int)syscall(__NR_io_uring_setup, 4, &p);
    if (r->fd < 0)
        return -1;
    char *sq = mmap(NULL, p.sq_off.array + p.sq_entries * sizeof(unsigned),
                    PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
    char *cq = mmap(NULL, p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe),
                    PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_CQ_RING);
    r->sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || r->sqes == MAP_FAILED)
        return -1;
    r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->cq_head = (unsigned *)(cq + p.cq_off.head);
    r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    return 0;
}

/* Submit one prepared sqe (slot 0) and wait for its completion; returns cqe->res. */
static int ring_run(struct ring *r)
{
    unsigned tail = *r->sq_tail;
    r->sq_array[tail & *r->sq_mask] = 0;
    __atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
    if (syscall(__NR_io_uring_enter, r->fd, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
        return -errno;
    unsigned head = *r->cq_head;
    if (head == __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE))
        return -EAGAIN;
    int res = r->cqes[head & *r->cq_mask].res;
    __atomic_store_n(r->cq_head, head + 1, __ATOMIC_RELEASE);
    return res;
}

static int iouring(const char *path, int creat)
{
    struct ring r;
    static char buffer[4096];
    if (ring_setup(&r) < 0)
        return refused("io_uring_setup");
    struct io_uring_sqe *sqe = &r.sqes[0];
    memset(sqe, 0, sizeof *sqe);
    sqe->opcode = IORING_OP_OPENAT;
    sqe->fd = AT_FDCWD;
    sqe->addr = (uint64_t)(uintptr_t)path;
    sqe->open_flags = creat ? O_CREAT | O_WRONLY : O_RDONLY;
    sqe->len = 0644;
    int fd = ring_run(&r);
    if (fd < 0) {
        errno = -fd;
        return refused("IORING_OP_OPENAT");
    }
    if (!creat) {
        memset(sqe, 0, sizeof *sqe);
        sqe->opcode = IORING_OP_READ;
        sqe->fd = fd;
        sqe->addr = (uint64_t)(uintptr_t)buffer;
        sqe->len = sizeof buffer - 1;
        int n = ring_run(&r);
        if (n > 0)
            fwrite(buffer, 1, n, stdout);
    }
    printf("io_uring openat: fd %d\n", fd);
    return 0;
}

static int create_file(const char *path)
{
    int fd = open(path, O_CREAT | O_WRONLY, 0644);
    if (fd < 0)
        return 1;
    close(fd);
    return 0;
}

static int reap(pid_t pid, const char *what)
{
    int status;
    if (pid < 0)
        return refused(what);
    waitpid(pid, &status, __WALL);
    printf("%s: child %d ran, status %d\n", what, pid, status);
    return 0;
}

static int clone_untraced(const char *path)
{
    pid_t pid = (pid_t)syscall(SYS_clone, CLONE_UNTRACED | SIGCHLD, 0, NULL, NULL, 0);
    if (pid == 0)
        _exit(create_file(path));
    return reap(pid, "clone(CLONE_UNTRACED)");
}

static int do_vfork(const char *path)
{
    pid_t pid = vfork();
    if (pid == 0)
        _exit(create_file(path));
    return reap(pid, "vfork");
}

static int do_clone3(const char *path, int untraced)
{
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = untraced ? CLONE_UNTRACED : 0;
    args.exit_signal = SIGCHLD;
    pid_t pid = (pid_t)syscall(SYS_clone3, &args, sizeof args);
    if (pid == 0)
        _exit(create_file(path));
    return reap(pid, untraced ? "clone3(CLONE_UNTRACED)" : "clone3");
}

static int daemonise(const char *path)
{
    pid_t pid = fork();
    if (pid < 0)
        return refused("fork");
    if (pid > 0) {
        waitpid(pid, NULL, 0);
        printf("daemon: started\n");
        return 0;
    }
    setsid();
    if (fork() != 0)
        _exit(0);
    /* The grandchild: an orphan in its own session, alone once the probe has exited. */
    usleep(300 * 1000);
    _exit(create_file(path));
}

static pid_t target_pid(const char *text)
{
    if (strcmp(text, "ppid") == 0)
        return getppid();
    if (strcmp(text, "-ppid") == 0)
        return -getppid();
    return (pid_t)atol(text);
}

static int open_tree_read(const char *dir)
{
    char buffer[4096];
    int tree = (int)syscall(428 /* open_tree */, AT_FDCWD, dir, 1 /* OPEN_TREE_CLONE */ | O_CLOEXEC);
    if (tree < 0)
        return refused("open_tree(OPEN_TREE_CLONE)");
    int fd = openat(tree, "secret", O_RDONLY);
    if (fd < 0)
        return refused("openat in the detached tree");
    ssize_t n = read(fd, buffer, sizeof buffer);
    if (n > 0)
        fwrite(buffer, 1, n, stdout);
    printf("open_tree: read %zd bytes\n", n);
    return 0;
}

static int do_ptrace(pid_t pid, int seize)
{
    long ok = seize ? ptrace(PTRACE_SEIZE, pid, 0, 0) : ptrace(PTRACE_ATTACH, pid, 0, 0);
    if (ok < 0)
        return refused(seize ? "PTRACE_SEIZE" : "PTRACE_ATTACH");
    if (seize)
        ptrace(PTRACE_INTERRUPT, pid, 0, 0);
    waitpid(pid, NULL, __WALL);
    ptrace(PTRACE_KILL, pid, 0, 0);
    printf("ptrace: attached to %d and killed it\n", pid);
    return 0;
}

static int do_kill(const char *how, pid_t pid)
{
    long ret;
    if (strcmp(how, "kill") == 0)
        ret = kill(pid, SIGKILL);
    else if (strcmp(how, "tgkill") == 0)
        ret = syscall(SYS_tgkill, pid, pid, SIGKILL);
    else {
        int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
        if (pidfd < 0)
            return refused("pidfd_open");
        ret = syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
    }
    if (ret < 0)
        return refused(how);
    printf("%s: sent SIGKILL to %d\n", how, pid);
    return 0;
}

/* Overwrite the first bytes of PID's environment (the top of its stack): visible from outside
 * in /proc/PID/environ. */
static int vm_writev(pid_t pid)
{
    char path[64], line[2048];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f || !fgets(line, sizeof line, f))
        return refused("read stat");
    fclose(f);
    /* field 50 is env_start; the comm field (2) may hold spaces: start after the last ')' */
    char *p = strrchr(line, ')');
    unsigned long value = 0;
    for (int field = 3; p && field <= 50; field++) {
        p = strchr(p + 1, ' ');
        if (p && field == 50)
            value = strtoul(p + 1, NULL, 10);
    }
    static char data[] = "PWNED=1";
    struct iovec local = {data, sizeof data - 1}, remote = {(void *)value, sizeof data - 1};
    if (!value)
        return refused("env_start");
    if (process_vm_writev(pid, &local, 1, &remote, 1, 0) < 0)
        return refused("process_vm_writev");
    printf("process_vm_writev: wrote into %d\n", pid);
    return 0;
}

static void *answer_continue(void *arg)
{
    int listener = *(int *)arg;
    for (;;) {
        struct seccomp_notif request;
        struct seccomp_notif_resp response;
        memset(&request, 0, sizeof request);
        if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &request) < 0)
            return NULL;
        memset(&response, 0, sizeof response);
        response.id = request.id;
        response.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
        ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &response);
    }
}

static int usernotif_read(const char *path)
{
    static int listener;
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_openat, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog program = {sizeof code / sizeof code[0], code};
    pthread_t thread;
    char buffer[4096];
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    listener = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                            SECCOMP_FILTER_FLAG_NEW_LISTENER, &program);
    if (listener < 0)
        return refused("seccomp(SECCOMP_FILTER_FLAG_NEW_LISTENER)");
    if (pthread_create(&thread, NULL, answer_continue, &listener) != 0)
        return refused("pthread_create");
    int fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_RDONLY);
    if (fd < 0)
        return refused("openat under our own listener");
    ssize_t n = read(fd, buffer, sizeof buffer);
    if (n > 0)
        fwrite(buffer, 1, n, stdout);
    printf("usernotif: opened %s\n", path);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc == 2 && strcmp(argv[1], "killpg") == 0) {
        if (kill(0, SIGKILL) < 0)
            return refused("kill(0)");
        return 0;
    }
    if (argc != 3) {
        fprintf(stderr, "usage: sidedoors MODE ARG (see the source)\n");
        return 2;
    }
    const char *mode = argv[1], *arg = argv[2];
    if (strcmp(mode, "int80-creat") == 0)
        return int80_open(arg, O_CREAT | O_WRONLY);
    if (strcmp(mode, "int80-read") == 0)
        return int80_open(arg, O_RDONLY);
    if (strcmp(mode, "x32-creat") == 0)
        return x32_creat(arg);
    if (strcmp(mode, "iouring-creat") == 0)
        return iouring(arg, 1);
    if (strcmp(mode, "iouring-read") == 0)
        return iouring(arg, 0);
    if (strcmp(mode, "clone-untraced") == 0)
        return clone_untraced(arg);
    if (strcmp(mode, "vfork") == 0)
        return do_vfork(arg);
    if (strcmp(mode, "clone3") == 0)
        return do_clone3(arg, 0);
    if (strcmp(mode, "clone3-untraced") == 0)
        return do_clone3(arg, 1);
    if (strcmp(mode, "daemon") == 0)
        return daemonise(arg);
    if (strcmp(mode, "ptrace-attach") == 0)
        return do_ptrace(target_pid(arg), 0);
    if (strcmp(mode, "ptrace-seize") == 0)
        return do_ptrace(target_pid(arg), 1);
    if (strcmp(mode, "kill") == 0 || strcmp(mode, "tgkill") == 0 ||
        strcmp(mode, "pidfd-kill") == 0)
        return do_kill(mode, target_pid(arg));
    if (strcmp(mode, "open-tree-read") == 0)
        return open_tree_read(arg);
    if (strcmp(mode, "usernotif-read") == 0)
        return usernotif_read(arg);
    if (strcmp(mode, "vm-writev") == 0)
        return vm_writev(target_pid(arg));
    fprintf(stderr, "sidedoors: unknown mode %s\n", mode);
    return 2;
}
