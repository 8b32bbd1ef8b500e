/* scratch_probe: look at agentd's scratch region from inside the agent (tests/test_toctou.py).
 *
 *   scratch_probe maps               print the /proc/self/maps line at BASE (or "absent")
 *   scratch_probe attack             try to change or write the region every way we know and
 *                                    print one "name=errno" line each (0 = it worked)
 *   scratch_probe store              write to the region with a plain store (expect SIGSEGV)
 *   scratch_probe regs PATH          openat(AT_FDCWD, PATH) by inline asm; print where rsi
 *                                    pointed after the syscall and what the descriptor reads
 *   scratch_probe fork               "maps" in a forked child and in a CLONE_VM thread
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define BASE 0x200000000000UL

static int maps(const char *who)
{
    char line[512];
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) {
        perror("maps");
        return 2;
    }
    while (fgets(line, sizeof line, f)) {
        if (strtoul(line, NULL, 16) == BASE) {
            printf("%s%s", who, line);
            fclose(f);
            return 0;
        }
    }
    fclose(f);
    printf("%sabsent\n", who);
    return 0;
}

static void show(const char *name, long result)
{
    printf("%s=%d\n", name, result < 0 ? errno : 0);
}

static int attack(void)
{
    char buffer[16] = "overwritten";
    int fd;
    show("mprotect", mprotect((void *)BASE, 4096, PROT_READ | PROT_WRITE));
    show("pkey_mprotect", syscall(SYS_pkey_mprotect, BASE, 4096, PROT_READ | PROT_WRITE, -1));
    show("munmap", munmap((void *)BASE, 4096));
    show("mremap", (long)mremap((void *)BASE, 4096, 8192, MREMAP_MAYMOVE) == -1L ? -1 : 0);
    show("madvise_dontneed", madvise((void *)BASE, 4096, MADV_DONTNEED));
    show("mmap_fixed", mmap((void *)BASE, 4096, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED ? -1 : 0);
    fd = open("/proc/self/mem", O_RDWR);
    show("open_proc_self_mem_rdwr", fd);
    if (fd >= 0)
        show("pwrite_proc_self_mem", pwrite(fd, buffer, sizeof buffer, BASE));
    struct iovec local = {buffer, sizeof buffer}, remote = {(void *)BASE, sizeof buffer};
    show("process_vm_writev", process_vm_writev(getpid(), &local, 1, &remote, 1, 0));
    int pipefd[2];
    if (pipe(pipefd) == 0) {
        (void)!write(pipefd[1], buffer, sizeof buffer);
        show("read_into", read(pipefd[0], (void *)BASE, sizeof buffer));
    }
    return 0;
}

static int regs(const char *path)
{
    long fd;
    register long rsi __asm__("rsi") = (long)path;
    register long rdi __asm__("rdi") = AT_FDCWD;
    register long rdx __asm__("rdx") = O_RDONLY;
    /* rsi is declared an output too: the kernel preserves it, so it says what the syscall
     * really read from after the tracer's rewrite. */
    __asm__ volatile("syscall" : "=a"(fd), "+r"(rsi), "+r"(rdi), "+r"(rdx)
                     : "a"((long)SYS_openat) : "rcx", "r11", "memory");
    unsigned long after = (unsigned long)rsi;   /* before any call clobbers rsi */
    char got[64] = {0};
    if (fd >= 0)
        (void)!read((int)fd, got, sizeof got - 1);
    printf("fd=%ld original=%#lx after=%#lx in_scratch=%d copy=%s content=%s\n", fd,
           (unsigned long)path, after, after >= BASE && after < BASE + (4UL << 30),
           after >= BASE ? (const char *)after : "-", got);
    return 0;
}

static void *thread_maps(void *arg)
{
    (void)arg;
    maps("thread: ");
    return NULL;
}

static int forked(void)
{
    pthread_t thread;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        maps("child: ");
        fflush(stdout);
        _exit(0);
    }
    waitpid(pid, NULL, 0);
    pthread_create(&thread, NULL, thread_maps, NULL);
    pthread_join(thread, NULL);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 2 && strcmp(argv[1], "maps") == 0)
        return maps("");
    if (argc >= 2 && strcmp(argv[1], "attack") == 0)
        return attack();
    if (argc >= 2 && strcmp(argv[1], "store") == 0) {
        *(volatile char *)BASE = 1;
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "regs") == 0)
        return regs(argv[2]);
    if (argc >= 2 && strcmp(argv[1], "fork") == 0)
        return forked();
    fprintf(stderr, "usage: scratch_probe maps|attack|store|regs PATH|fork\n");
    return 2;
}
