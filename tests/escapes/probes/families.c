/* families: the four containment families of issue 12, one deed per mode.
 *
 *   families setflags PATH FLAGS     open PATH read-only, FS_IOC_SETFLAGS |= FLAGS (hex: 0x10
 *                                    immutable, 0x20 append-only): chattr through a read fd
 *   families fssetxattr PATH         open PATH read-only, FS_IOC_FSSETXATTR |= FS_XFLAG_IMMUTABLE
 *   families setversion PATH N       open PATH read-only, FS_IOC_SETVERSION = N
 *   families mknod-write PATH MAJ MIN TEXT
 *                                    mknod a character device PATH (MAJ, MIN), write TEXT to it
 *   families mknod-block PATH MAJ MIN
 *                                    mknod a block device PATH (MAJ, MIN)
 *   families prlimit PID             prlimit64(PID, RLIMIT_NOFILE, {17, 17})
 *   families renice PID              setpriority(PRIO_PROCESS, PID, 19)
 *   families affinity PID            sched_setaffinity(PID, {cpu 0})
 *   families scheduler PID           sched_setscheduler(PID, SCHED_IDLE)
 *   families ioprio PID              ioprio_set(IOPRIO_WHO_PROCESS, PID, IDLE class)
 *   families setown PID              a pipe whose reader's owner is PID (F_SETOWN), O_ASYNC on,
 *                                    one byte written: SIGIO (default action: terminate) to PID
 *   families core DIR                chdir DIR, raise RLIMIT_CORE (hard, else soft) to
 *                                    unlimited, abort(): the kernel writes DIR/core
 *   families own-tree                what the agent may do to itself: lower its own RLIMIT_NOFILE
 *                                    (pid 0 and its own pid), renice and set the affinity of a
 *                                    child, F_SETOWN to itself; prints "own-tree ok" when all
 *                                    worked
 *
 * Prints what happened; exit status 0 when the deed's call succeeded, 1 when it was refused.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int refused(const char *what)
{
    printf("refused: %s: %s\n", what, strerror(errno));
    return 1;
}

static int done(const char *what)
{
    printf("done: %s\n", what);
    return 0;
}

static int read_only(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        refused("open O_RDONLY");
        exit(1);
    }
    return fd;
}

static int setflags(const char *path, long add)
{
    int fd = read_only(path);
    long flags = 0;
    if (ioctl(fd, FS_IOC_GETFLAGS, &flags) < 0)
        return refused("FS_IOC_GETFLAGS");
    flags |= add;
    if (ioctl(fd, FS_IOC_SETFLAGS, &flags) < 0)
        return refused("FS_IOC_SETFLAGS");
    return done("FS_IOC_SETFLAGS");
}

static int fssetxattr(const char *path)
{
    int fd = read_only(path);
    struct fsxattr attr;
    if (ioctl(fd, FS_IOC_FSGETXATTR, &attr) < 0)
        return refused("FS_IOC_FSGETXATTR");
    attr.fsx_xflags |= FS_XFLAG_IMMUTABLE;
    if (ioctl(fd, FS_IOC_FSSETXATTR, &attr) < 0)
        return refused("FS_IOC_FSSETXATTR");
    return done("FS_IOC_FSSETXATTR");
}

static int setversion(const char *path, long version)
{
    int fd = read_only(path);
    if (ioctl(fd, FS_IOC_SETVERSION, &version) < 0)
        return refused("FS_IOC_SETVERSION");
    return done("FS_IOC_SETVERSION");
}

static int make_device(const char *path, mode_t type, const char *major, const char *minor)
{
    dev_t dev = makedev((unsigned)atoi(major), (unsigned)atoi(minor));
    if (mknod(path, type | 0600, dev) < 0)
        return refused("mknod");
    return done("mknod");
}

static int device_write(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_NOCTTY);
    if (fd < 0)
        return refused("open the device node");
    if (write(fd, text, strlen(text)) < 0)
        return refused("write to the device node");
    return done("wrote through the device node");
}

static int on_process(const char *how, pid_t pid)
{
    long ret;
    if (strcmp(how, "prlimit") == 0) {
        struct rlimit limit = {17, 17};
        ret = prlimit(pid, RLIMIT_NOFILE, &limit, NULL);
    } else if (strcmp(how, "renice") == 0) {
        ret = setpriority(PRIO_PROCESS, (id_t)pid, 19);
    } else if (strcmp(how, "affinity") == 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(0, &set);
        ret = sched_setaffinity(pid, sizeof set, &set);
    } else if (strcmp(how, "scheduler") == 0) {
        struct sched_param param = {0};
        ret = sched_setscheduler(pid, SCHED_IDLE, &param);
    } else if (strcmp(how, "ioprio") == 0) {
        ret = syscall(SYS_ioprio_set, 1 /* IOPRIO_WHO_PROCESS */, pid, 3 << 13 /* IDLE */);
    } else {
        int pipe_fds[2];
        if (pipe(pipe_fds) < 0)
            return refused("pipe");
        if (fcntl(pipe_fds[0], F_SETOWN, pid) < 0)
            return refused("F_SETOWN");
        if (fcntl(pipe_fds[0], F_SETFL, O_ASYNC) < 0)
            return refused("F_SETFL O_ASYNC");
        ret = write(pipe_fds[1], "x", 1) == 1 ? 0 : -1;
    }
    if (ret < 0)
        return refused(how);
    return done(how);
}

static int core(const char *dir)
{
    struct rlimit unlimited = {RLIM_INFINITY, RLIM_INFINITY}, limit;
    if (chdir(dir) < 0)
        return refused("chdir");
    if (setrlimit(RLIMIT_CORE, &unlimited) < 0) {
        refused("setrlimit(RLIMIT_CORE, unlimited)");
        getrlimit(RLIMIT_CORE, &limit);
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_CORE, &limit);
    }
    getrlimit(RLIMIT_CORE, &limit);
    printf("RLIMIT_CORE %llu/%llu; aborting in %s\n", (unsigned long long)limit.rlim_cur,
           (unsigned long long)limit.rlim_max, dir);
    abort();
}

static int own_tree(void)
{
    int failures = 0;
    struct rlimit limit = {64, 64};
    if (prlimit(0, RLIMIT_NOFILE, &limit, NULL) < 0)
        failures += refused("prlimit(0)");
    limit.rlim_cur = limit.rlim_max = 60;
    if (prlimit(getpid(), RLIMIT_NOFILE, &limit, NULL) < 0)
        failures += refused("prlimit(own pid)");
    pid_t child = fork();
    if (child == 0) {
        pause();
        _exit(0);
    }
    if (setpriority(PRIO_PROCESS, (id_t)child, 10) < 0)
        failures += refused("setpriority(child)");
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(0, &set);
    if (sched_setaffinity(child, sizeof set, &set) < 0)
        failures += refused("sched_setaffinity(child)");
    struct rlimit child_limit = {32, 32};
    if (prlimit(child, RLIMIT_NOFILE, &child_limit, NULL) < 0)
        failures += refused("prlimit(child)");
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    int pipe_fds[2];
    if (pipe(pipe_fds) < 0 || fcntl(pipe_fds[0], F_SETOWN, getpid()) < 0)
        failures += refused("F_SETOWN(self)");
    if (failures == 0)
        printf("own-tree ok\n");
    return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: families MODE ARGS... (see the source)\n");
        return 2;
    }
    const char *mode = argv[1];
    if (strcmp(mode, "own-tree") == 0)
        return own_tree();
    if (strcmp(mode, "setflags") == 0 && argc == 4)
        return setflags(argv[2], strtol(argv[3], NULL, 16));
    if (strcmp(mode, "fssetxattr") == 0 && argc == 3)
        return fssetxattr(argv[2]);
    if (strcmp(mode, "setversion") == 0 && argc == 4)
        return setversion(argv[2], atol(argv[3]));
    if (strcmp(mode, "mknod-write") == 0 && argc == 6) {
        if (make_device(argv[2], S_IFCHR, argv[3], argv[4]) != 0)
            return 1;
        return device_write(argv[2], argv[5]);
    }
    if (strcmp(mode, "mknod-block") == 0 && argc == 5)
        return make_device(argv[2], S_IFBLK, argv[3], argv[4]);
    if (strcmp(mode, "core") == 0 && argc == 3)
        return core(argv[2]);
    if (argc == 3)
        return on_process(mode, (pid_t)atol(argv[2]));
    fprintf(stderr, "families: bad arguments for %s\n", mode);
    return 2;
}
