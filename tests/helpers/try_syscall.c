/* try_syscall: make one system call and exit with its errno (0 when it succeeded).
 *
 * After bubblewrap's tests/try-syscall.c. Tests run it under a seccomp filter or the tracer and
 * look at the exit status (the errno the kernel or the sandbox answered) or at the signal that
 * killed it (SIGSYS from SECCOMP_RET_KILL_PROCESS).
 *
 * Usage: try_syscall [--int80 | --x32] NR [ARG...]          (at most 6 ARGs)
 *   --int80  enter the kernel through `int $0x80`: the ia32 ABI (NR is an i386 number, 5 args)
 *   --x32    set __X32_SYSCALL_BIT (0x40000000) in NR: the x32 ABI
 *   ARG      an integer (decimal, 0x hex, 0 octal, or negative), or
 *            str:TEXT  a pointer to the NUL-terminated TEXT
 *            buf:N     a pointer to N zeroed bytes (e.g. struct io_uring_params, clone_args)
 *            pid       getpid()
 * Prints "ret=<value> errno=<errno>" on stdout. A child made by clone/fork/clone3 exits 0 at
 * once; the parent reaps it. Exit status: the errno (255 if it does not fit), 0 on success,
 * 125 on a usage error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define X32_SYSCALL_BIT 0x40000000L

static long parse_arg(const char *text)
{
    if (strncmp(text, "str:", 4) == 0)
        return (long)(text + 4);
    if (strncmp(text, "buf:", 4) == 0) {
        size_t size = strtoul(text + 4, NULL, 0);
        void *buffer = calloc(1, size ? size : 1);
        if (!buffer) {
            perror("calloc");
            exit(125);
        }
        return (long)buffer;
    }
    if (strcmp(text, "pid") == 0)
        return (long)getpid();
    char *end;
    errno = 0;
    long value = text[0] == '-' ? strtol(text, &end, 0) : (long)strtoul(text, &end, 0);
    if (errno || *end) {
        fprintf(stderr, "try_syscall: bad argument '%s'\n", text);
        exit(125);
    }
    return value;
}

static long int80(long nr, const long *a)
{
    long ret;
    /* The compat entry zeroes r8-r15 on the way back: tell the compiler. */
    __asm__ volatile("int $0x80"
                     : "=a"(ret)
                     : "a"(nr), "b"(a[0]), "c"(a[1]), "d"(a[2]), "S"(a[3]), "D"(a[4])
                     : "memory", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15");
    ret = (int)ret; /* eax, sign-extended */
    if (ret < 0 && ret > -4096) {
        errno = (int)-ret;
        return -1;
    }
    return ret;
}

int main(int argc, char **argv)
{
    int index = 1;
    int mode = 0; /* 0 native, 1 int80, 2 x32 */
    if (index < argc && strcmp(argv[index], "--int80") == 0) {
        mode = 1;
        index++;
    } else if (index < argc && strcmp(argv[index], "--x32") == 0) {
        mode = 2;
        index++;
    }
    if (index >= argc || argc - index - 1 > 6) {
        fprintf(stderr, "usage: try_syscall [--int80|--x32] NR [ARG...] (at most 6 ARGs)\n");
        return 125;
    }
    long nr = parse_arg(argv[index++]);
    long args[6] = {0, 0, 0, 0, 0, 0};
    for (int i = 0; index < argc; i++)
        args[i] = parse_arg(argv[index++]);

    errno = 0;
    long ret;
    if (mode == 1)
        ret = int80(nr, args);
    else
        ret = syscall(mode == 2 ? (nr | X32_SYSCALL_BIT) : nr, args[0], args[1], args[2],
                      args[3], args[4], args[5]);
    int saved = errno;

    int makes_child = mode == 0 && (nr == SYS_clone || nr == SYS_fork || nr == SYS_clone3);
    if (makes_child && ret == 0)
        _exit(0); /* the child */
    if (makes_child && ret > 0)
        waitpid((pid_t)ret, NULL, __WALL);

    printf("ret=%ld errno=%d\n", ret, ret == -1 ? saved : 0);
    fflush(stdout);
    if (ret != -1)
        return 0;
    return saved > 0 && saved < 255 ? saved : 255;
}
