/*
 * natrium-faults power-loss shim (test only; loaded with LD_PRELOAD into a natrium process).
 *
 * Owns: an undo journal of every change made to files under NATRIUM_POWERLOSS_ROOT that no
 * fsync/fdatasync has made durable yet. After the process is killed with SIGKILL, the harness
 * (crates/faults/src/powerloss.rs) reads the journal and undoes each change that was not synced,
 * leaving the files as a power cut at that instant could have left them (the pessimistic case:
 * everything not synced is lost, nothing synced is).
 *
 * What is journaled, before the change is made (write-ahead undo):
 *   - data: write/pwrite/writev/pwritev, ftruncate/truncate, fallocate: the file's old size and
 *     the old bytes of the range overwritten; durable once the file is fsynced (the fsync's
 *     start is the cut-off: writes racing with it are not covered);
 *   - names: files created, directories made, renames, unlinks and rmdirs, whose directory entry
 *     is durable once the parent directory is fsynced (POSIX; ext4 is often kinder). Replaced and
 *     unlinked files are hard-linked aside first so they can come back;
 *   - sync()/syncfs(): everything before is durable.
 * Files opened O_SYNC/O_DSYNC are durable per write. copy_file_range, sendfile and shared
 * writable mappings of tracked files are not modelled: the journal records them and the harness
 * refuses to apply it.
 *
 * Journal format (little-endian): the 8-byte magic "NPLJRNL1", then records
 *   u32 total_len | u8 kind | fields
 * with u64 integers and strings as u32 length + bytes:
 *   'W' ino, old_size, offset, old_len, old bytes   (undo: truncate to old_size, write back bytes)
 *   'S' ino, upto      (fsync of file or directory `ino` covers records before offset `upto`)
 *   'A' upto           (sync/syncfs: everything before `upto` is durable)
 *   'C' dir_ino, ino, path           (file created)
 *   'M' dir_ino, ino, path           (directory made)
 *   'R' old_dir, new_dir, ino, old, new, aside   (rename; aside holds the replaced file or "")
 *   'U' dir_ino, ino, path, aside    (unlink)
 *   'D' dir_ino, ino, path           (rmdir)
 *   'K' offset         (the operation journaled at `offset` failed: ignore it)
 *   'Z' what           (an operation this journal cannot model)
 * When nothing is pending and no sync is in flight, the journal is cut back to its magic and the
 * aside links are removed.
 *
 * NATRIUM_POWERLOSS_SYNC_DELAY_MS (optional) makes every sync of a tracked file or directory
 * take that much longer: a slow disk, which widens the window between a write and its fsync.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the journal is written in host order, which must be little-endian"
#endif

#define MAX_FDS 65536
#define MAX_PENDING 8192

/* Per descriptor: whether it is a tracked file or directory under the root. */
struct fdinfo {
    unsigned char tracked;
    unsigned char is_dir;
    unsigned char sync_writes;
    uint64_t ino;
};

static struct fdinfo fds[MAX_FDS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static int enabled;
static char root[PATH_MAX];
static size_t root_len;
static char aside_dir[PATH_MAX];
static int jfd = -1;
static uint64_t jpos;
static uint64_t aside_seq;
static int syncs_in_flight;
static useconds_t sync_delay_us;
static int pending_overflow;

/* Inodes with records not yet covered by a sync, and the offset of their last record. */
static struct {
    uint64_t ino;
    uint64_t last;
} pending[MAX_PENDING];
static int npending;

/* The real functions. */
static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real_creat)(const char *, mode_t);
static int (*real_creat64)(const char *, mode_t);
static int (*real_close)(int);
static int (*real_dup)(int);
static int (*real_dup2)(int, int);
static int (*real_dup3)(int, int, int);
static int (*real_fcntl)(int, int, ...);
static int (*real_fcntl64)(int, int, ...);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pwritev64)(int, const struct iovec *, int, off64_t);
static ssize_t (*real_pwritev2)(int, const struct iovec *, int, off_t, int);
static ssize_t (*real_pwritev64v2)(int, const struct iovec *, int, off64_t, int);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off64_t);
static int (*real_truncate)(const char *, off_t);
static int (*real_truncate64)(const char *, off64_t);
static int (*real_fallocate)(int, int, off_t, off_t);
static int (*real_fallocate64)(int, int, off64_t, off64_t);
static int (*real_posix_fallocate)(int, off_t, off_t);
static int (*real_posix_fallocate64)(int, off64_t, off64_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static void (*real_sync)(void);
static int (*real_syncfs)(int);
static int (*real_rename)(const char *, const char *);
static int (*real_renameat)(int, const char *, int, const char *);
static int (*real_renameat2)(int, const char *, int, const char *, unsigned int);
static int (*real_unlink)(const char *);
static int (*real_unlinkat)(int, const char *, int);
static int (*real_rmdir)(const char *);
static int (*real_mkdir)(const char *, mode_t);
static int (*real_mkdirat)(int, const char *, mode_t);
static ssize_t (*real_copy_file_range)(int, off64_t *, int, off64_t *, size_t, unsigned int);
static ssize_t (*real_sendfile)(int, int, off_t *, size_t);
static ssize_t (*real_sendfile64)(int, int, off64_t *, size_t);
static void *(*real_mmap)(void *, size_t, int, int, int, off_t);
static void *(*real_mmap64)(void *, size_t, int, int, int, off64_t);

#define RESOLVE(name) real_##name = dlsym(RTLD_NEXT, #name)

static void resolve_all(void) {
    RESOLVE(open); RESOLVE(open64); RESOLVE(openat); RESOLVE(openat64);
    RESOLVE(creat); RESOLVE(creat64); RESOLVE(close); RESOLVE(dup); RESOLVE(dup2);
    RESOLVE(dup3); RESOLVE(fcntl); RESOLVE(fcntl64); RESOLVE(write); RESOLVE(pwrite);
    RESOLVE(pwrite64); RESOLVE(writev); RESOLVE(pwritev); RESOLVE(pwritev64);
    RESOLVE(pwritev2); RESOLVE(pwritev64v2); RESOLVE(ftruncate); RESOLVE(ftruncate64);
    RESOLVE(truncate); RESOLVE(truncate64); RESOLVE(fallocate); RESOLVE(fallocate64);
    RESOLVE(posix_fallocate); RESOLVE(posix_fallocate64); RESOLVE(fsync);
    RESOLVE(fdatasync); RESOLVE(sync); RESOLVE(syncfs); RESOLVE(rename); RESOLVE(renameat);
    RESOLVE(renameat2); RESOLVE(unlink); RESOLVE(unlinkat); RESOLVE(rmdir); RESOLVE(mkdir);
    RESOLVE(mkdirat); RESOLVE(copy_file_range); RESOLVE(sendfile); RESOLVE(sendfile64);
    RESOLVE(mmap); RESOLVE(mmap64);
}

static void die(const char *what) {
    /* A journal that cannot be written would make the run lie: stop the process loudly. */
    char msg[512];
    int n = snprintf(msg, sizeof msg, "natrium powerloss shim: %s: %s\n", what, strerror(errno));
    if (n > 0 && real_write) real_write(2, msg, (size_t)n);
    abort();
}

static void init(void) {
    resolve_all();
    const char *r = getenv("NATRIUM_POWERLOSS_ROOT");
    const char *j = getenv("NATRIUM_POWERLOSS_JOURNAL");
    if (!r || !j || !*r || !*j) return;
    if (!realpath(r, root)) {
        snprintf(root, sizeof root, "%s", r);
    }
    root_len = strlen(root);
    while (root_len > 1 && root[root_len - 1] == '/') root[--root_len] = 0;
    const char *d = getenv("NATRIUM_POWERLOSS_SYNC_DELAY_MS");
    if (d && *d) sync_delay_us = (useconds_t)(strtoul(d, NULL, 10) * 1000);
    snprintf(aside_dir, sizeof aside_dir, "%s.aside", j);
    if (real_mkdir(aside_dir, 0700) != 0 && errno != EEXIST) die("mkdir aside");
    jfd = real_open(j, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (jfd < 0) die("open journal");
    if (real_pwrite(jfd, "NPLJRNL1", 8, 0) != 8) die("write journal");
    jpos = 8;
    enabled = 1;
}

static inline void ensure(void) { pthread_once(&once, init); }

__attribute__((constructor)) static void ctor(void) { ensure(); }

/* ---- paths ---- */

static int under_root(const char *abs) {
    return enabled && strncmp(abs, root, root_len) == 0 && abs[root_len] == '/';
}

static int at_or_under_root(const char *abs) {
    return enabled && strncmp(abs, root, root_len) == 0 &&
           (abs[root_len] == '/' || abs[root_len] == 0);
}

/* Removes "." and ".." components and repeated slashes from an absolute path, in place
 * (lexically: symbolic links are not followed). */
static void normalize(char *p) {
    char *out = p; /* write position; p[0] is '/' */
    const char *in = p;
    while (*in) {
        while (*in == '/') in++;
        if (!*in) break;
        const char *end = strchr(in, '/');
        size_t len = end ? (size_t)(end - in) : strlen(in);
        if (len == 1 && in[0] == '.') {
            /* skip */
        } else if (len == 2 && in[0] == '.' && in[1] == '.') {
            while (out > p && *--out != '/') {}
        } else {
            *out++ = '/';
            memmove(out, in, len);
            out += len;
        }
        in += len;
    }
    if (out == p) *out++ = '/';
    *out = 0;
}

/* Makes `path` (relative to `dirfd`) absolute and normal in `out`. */
static int absolute(int dirfd, const char *path, char *out) {
    int r = -1;
    if (!path) return -1;
    if (path[0] == '/') {
        int n = snprintf(out, PATH_MAX, "%s", path);
        r = n > 0 && n < PATH_MAX ? 0 : -1;
        if (r == 0) normalize(out);
        return r;
    }
    char base[PATH_MAX];
    if (dirfd == AT_FDCWD) {
        if (!getcwd(base, sizeof base)) return -1;
    } else {
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
        ssize_t n = readlink(link, base, sizeof base - 1);
        if (n < 0) return -1;
        base[n] = 0;
    }
    int n = snprintf(out, PATH_MAX, "%s/%s", base, path);
    r = n > 0 && n < PATH_MAX ? 0 : -1;
    if (r == 0) normalize(out);
    return r;
}

static uint64_t parent_ino(const char *abs) {
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", abs);
    char *slash = strrchr(dir, '/');
    if (!slash) return 0;
    if (slash == dir) slash[1] = 0; else *slash = 0;
    struct stat st;
    return stat(dir, &st) == 0 ? (uint64_t)st.st_ino : 0;
}

/* ---- journal (caller holds `lock`) ---- */

struct rec {
    unsigned char buf[4096 + 3 * PATH_MAX];
    size_t len;
    const void *tail; /* a large trailing blob (old bytes), written separately */
    size_t tail_len;
};

static void rec_begin(struct rec *r, char kind) {
    r->len = 4;
    r->buf[r->len++] = (unsigned char)kind;
    r->tail = NULL;
    r->tail_len = 0;
}
static void put_u64(struct rec *r, uint64_t v) { memcpy(r->buf + r->len, &v, 8); r->len += 8; }
static void put_str(struct rec *r, const char *s) {
    uint32_t n = (uint32_t)strlen(s);
    memcpy(r->buf + r->len, &n, 4);
    r->len += 4;
    memcpy(r->buf + r->len, s, n);
    r->len += n;
}

static void full_write(const void *p, size_t n, uint64_t at) {
    const char *c = p;
    while (n > 0) {
        ssize_t w = real_pwrite(jfd, c, n, (off_t)at);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) die("write journal");
        c += w; n -= (size_t)w; at += (uint64_t)w;
    }
}

/* Appends the record; returns its offset. */
static uint64_t rec_end(struct rec *r) {
    uint32_t total = (uint32_t)(r->len + r->tail_len);
    memcpy(r->buf, &total, 4);
    uint64_t at = jpos;
    if (r->tail_len == 0) {
        full_write(r->buf, r->len, at);
    } else {
        full_write(r->buf, r->len, at);
        full_write(r->tail, r->tail_len, at + r->len);
    }
    jpos += total;
    return at;
}

static void mark_pending(uint64_t ino, uint64_t at) {
    for (int i = 0; i < npending; i++) {
        if (pending[i].ino == ino) { pending[i].last = at; return; }
    }
    if (npending < MAX_PENDING) {
        pending[npending].ino = ino;
        pending[npending].last = at;
        npending++;
    } else {
        pending_overflow = 1;
    }
}

static void clear_aside(void) {
    DIR *d = opendir(aside_dir);
    if (!d) return;
    struct dirent *e;
    char p[PATH_MAX];
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        snprintf(p, sizeof p, "%s/%s", aside_dir, e->d_name);
        real_unlink(p);
    }
    closedir(d);
}

/* Cuts the journal back when nothing in it can be undone any more. */
static void maybe_compact(void) {
    if (npending == 0 && !pending_overflow && syncs_in_flight == 0 && jpos > 8) {
        if (real_ftruncate(jfd, 8) != 0) die("truncate journal");
        jpos = 8;
        clear_aside();
    }
}

static void synced(uint64_t ino, uint64_t upto, int all) {
    struct rec r;
    if (all) { rec_begin(&r, 'A'); put_u64(&r, upto); }
    else { rec_begin(&r, 'S'); put_u64(&r, ino); put_u64(&r, upto); }
    rec_end(&r);
    int j = 0;
    for (int i = 0; i < npending; i++) {
        int covered = pending[i].last < upto && (all || pending[i].ino == ino);
        if (!covered) pending[j++] = pending[i];
    }
    npending = j;
    if (all) pending_overflow = 0;
    maybe_compact();
}

static void unsupported(const char *what) {
    struct rec r;
    pthread_mutex_lock(&lock);
    rec_begin(&r, 'Z');
    put_str(&r, what);
    rec_end(&r);
    pending_overflow = 1; /* never compact it away */
    pthread_mutex_unlock(&lock);
}

/* ---- descriptors ---- */

static void track_fd(int fd, const char *abs) {
    if (fd < 0 || fd >= MAX_FDS) return;
    fds[fd].tracked = 0;
    if (!at_or_under_root(abs)) return;
    struct stat st;
    if (fstat(fd, &st) != 0) return;
    if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) return;
    int fl = real_fcntl(fd, F_GETFL);
    fds[fd].ino = (uint64_t)st.st_ino;
    fds[fd].is_dir = S_ISDIR(st.st_mode) ? 1 : 0;
    fds[fd].sync_writes = (fl >= 0 && (fl & (O_SYNC | O_DSYNC))) ? 1 : 0;
    fds[fd].tracked = 1;
}

static inline int tracked_file(int fd) {
    return fd >= 0 && fd < MAX_FDS && fds[fd].tracked && !fds[fd].is_dir;
}

static void copy_fd(int from, int to) {
    if (to < 0 || to >= MAX_FDS) return;
    if (from >= 0 && from < MAX_FDS) fds[to] = fds[from];
    else fds[to].tracked = 0;
}

/* Journals a change of bytes [off, off+len) (and of the size, to `new_size` when it grows or
 * shrinks); returns the record's offset. Caller holds `lock`. */
static uint64_t journal_range_ino(int fd, uint64_t ino, uint64_t off, uint64_t len) {
    struct stat st;
    if (fstat(fd, &st) != 0) die("fstat tracked file");
    uint64_t size = (uint64_t)st.st_size;
    uint64_t end = off + len;
    uint64_t keep_end = end < size ? end : size;
    uint64_t old_len = keep_end > off ? keep_end - off : 0;
    void *old = NULL;
    if (old_len > 0) {
        old = malloc(old_len);
        if (!old) die("malloc");
        uint64_t got = 0;
        while (got < old_len) {
            ssize_t n = pread(fd, (char *)old + got, old_len - got, (off_t)(off + got));
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) die("read old bytes");
            got += (uint64_t)n;
        }
    }
    struct rec r;
    rec_begin(&r, 'W');
    put_u64(&r, ino);
    put_u64(&r, size);
    put_u64(&r, off);
    put_u64(&r, old_len);
    r.tail = old;
    r.tail_len = old_len;
    uint64_t at = rec_end(&r);
    free(old);
    mark_pending(ino, at);
    return at;
}

static uint64_t journal_range(int fd, uint64_t off, uint64_t len) {
    return journal_range_ino(fd, fds[fd].ino, off, len);
}

static uint64_t cur_offset(int fd, size_t len) {
    int fl = real_fcntl(fd, F_GETFL);
    if (fl >= 0 && (fl & O_APPEND)) {
        struct stat st;
        return fstat(fd, &st) == 0 ? (uint64_t)st.st_size : 0;
    }
    off_t o = lseek(fd, 0, SEEK_CUR);
    (void)len;
    return o < 0 ? 0 : (uint64_t)o;
}

static size_t iov_len(const struct iovec *iov, int n) {
    size_t t = 0;
    for (int i = 0; i < n; i++) t += iov[i].iov_len;
    return t;
}

/* ---- names ---- */

static void journal_created(int fd, const char *abs, char kind) {
    struct stat st;
    if (fd >= 0 ? fstat(fd, &st) != 0 : stat(abs, &st) != 0) return;
    struct rec r;
    rec_begin(&r, kind);
    uint64_t dir = parent_ino(abs);
    put_u64(&r, dir);
    put_u64(&r, (uint64_t)st.st_ino);
    put_str(&r, abs);
    uint64_t at = rec_end(&r);
    mark_pending(dir, at);
}

static void cancel(uint64_t at) {
    struct rec r;
    rec_begin(&r, 'K');
    put_u64(&r, at);
    rec_end(&r);
}

/* Hard-links `abs` aside; returns 1 and the aside path if it exists as a regular file. */
static int link_aside(const char *abs, char *aside, uint64_t *ino) {
    struct stat st;
    aside[0] = 0;
    if (lstat(abs, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    snprintf(aside, PATH_MAX, "%s/%llu", aside_dir, (unsigned long long)++aside_seq);
    if (link(abs, aside) != 0) die("link aside");
    *ino = (uint64_t)st.st_ino;
    return 1;
}

/* ---- open / close / dup ---- */

static int do_open(int dirfd, const char *path, int flags, mode_t mode, int at, int is64) {
    ensure();
    char abs[PATH_MAX];
    int watch = enabled && absolute(dirfd, path, abs) == 0 && at_or_under_root(abs);
    int creating = 0;
    if (watch && (flags & O_CREAT)) {
        struct stat st;
        creating = lstat(abs, &st) != 0 && errno == ENOENT;
    }
    if (watch) pthread_mutex_lock(&lock);
    if (watch && !creating && (flags & O_TRUNC) && (flags & O_ACCMODE) != O_RDONLY &&
        under_root(abs)) {
        /* Opening with O_TRUNC cuts an existing file: journal its content first. */
        int rfd = real_open(abs, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (rfd >= 0 && fstat(rfd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
            journal_range_ino(rfd, (uint64_t)st.st_ino, 0, (uint64_t)st.st_size);
        }
        if (rfd >= 0) real_close(rfd);
    }
    int fd;
    if (at) fd = is64 ? real_openat64(dirfd, path, flags, mode) : real_openat(dirfd, path, flags, mode);
    else fd = is64 ? real_open64(path, flags, mode) : real_open(path, flags, mode);
    if (watch) {
        int saved = errno;
        if (fd >= 0) {
            if (creating && under_root(abs)) journal_created(fd, abs, 'C');
            track_fd(fd, abs);
        }
        pthread_mutex_unlock(&lock);
        errno = saved;
    } else if (fd >= 0 && fd < MAX_FDS) {
        fds[fd].tracked = 0;
    }
    return fd;
}

static mode_t va_mode(int flags, va_list ap) {
    if (flags & (O_CREAT | O_TMPFILE)) return (mode_t)va_arg(ap, int);
    return 0;
}

int open(const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t m = va_mode(flags, ap); va_end(ap);
    return do_open(AT_FDCWD, path, flags, m, 0, 0);
}
int open64(const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t m = va_mode(flags, ap); va_end(ap);
    return do_open(AT_FDCWD, path, flags, m, 0, 1);
}
int openat(int dirfd, const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t m = va_mode(flags, ap); va_end(ap);
    return do_open(dirfd, path, flags, m, 1, 0);
}
int openat64(int dirfd, const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t m = va_mode(flags, ap); va_end(ap);
    return do_open(dirfd, path, flags, m, 1, 1);
}
int creat(const char *path, mode_t mode) {
    return do_open(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode, 0, 0);
}
int creat64(const char *path, mode_t mode) {
    return do_open(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode, 0, 1);
}

int close(int fd) {
    ensure();
    if (fd >= 0 && fd < MAX_FDS) fds[fd].tracked = 0;
    return real_close(fd);
}

int dup(int fd) {
    ensure();
    int r = real_dup(fd);
    if (r >= 0) copy_fd(fd, r);
    return r;
}
int dup2(int fd, int to) {
    ensure();
    int r = real_dup2(fd, to);
    if (r >= 0) copy_fd(fd, r);
    return r;
}
int dup3(int fd, int to, int flags) {
    ensure();
    int r = real_dup3(fd, to, flags);
    if (r >= 0) copy_fd(fd, r);
    return r;
}

static int do_fcntl(int (*real)(int, int, ...), int fd, int cmd, va_list ap) {
    /* Every command this process uses takes an int or a pointer; pass the word along. */
    void *arg = va_arg(ap, void *);
    int r = real(fd, cmd, arg);
    if (r >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)) copy_fd(fd, r);
    return r;
}
int fcntl(int fd, int cmd, ...) {
    ensure();
    va_list ap; va_start(ap, cmd); int r = do_fcntl(real_fcntl, fd, cmd, ap); va_end(ap);
    return r;
}
int fcntl64(int fd, int cmd, ...) {
    ensure();
    va_list ap; va_start(ap, cmd);
    int r = do_fcntl(real_fcntl64 ? real_fcntl64 : real_fcntl, fd, cmd, ap);
    va_end(ap);
    return r;
}

/* ---- writes ---- */

#define WRITE_WRAP(call_real, offset_expr, length_expr)                       \
    ensure();                                                                 \
    if (!tracked_file(fd) || fds[fd].sync_writes) return call_real;           \
    pthread_mutex_lock(&lock);                                                \
    journal_range(fd, (offset_expr), (length_expr));                          \
    ssize_t r_ = call_real;                                                   \
    int e_ = errno;                                                           \
    pthread_mutex_unlock(&lock);                                              \
    errno = e_;                                                               \
    return r_;

ssize_t write(int fd, const void *buf, size_t n) {
    WRITE_WRAP(real_write(fd, buf, n), cur_offset(fd, n), n)
}
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    WRITE_WRAP(real_pwrite(fd, buf, n, off), (uint64_t)off, n)
}
ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) {
    WRITE_WRAP(real_pwrite64(fd, buf, n, off), (uint64_t)off, n)
}
ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    WRITE_WRAP(real_writev(fd, iov, cnt), cur_offset(fd, 0), iov_len(iov, cnt))
}
ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off) {
    WRITE_WRAP(real_pwritev(fd, iov, cnt, off), (uint64_t)off, iov_len(iov, cnt))
}
ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off64_t off) {
    WRITE_WRAP(real_pwritev64(fd, iov, cnt, off), (uint64_t)off, iov_len(iov, cnt))
}
ssize_t pwritev2(int fd, const struct iovec *iov, int cnt, off_t off, int flags) {
    WRITE_WRAP(real_pwritev2(fd, iov, cnt, off, flags),
               off == -1 ? cur_offset(fd, 0) : (uint64_t)off, iov_len(iov, cnt))
}
ssize_t pwritev64v2(int fd, const struct iovec *iov, int cnt, off64_t off, int flags) {
    WRITE_WRAP(real_pwritev64v2(fd, iov, cnt, off, flags),
               off == -1 ? cur_offset(fd, 0) : (uint64_t)off, iov_len(iov, cnt))
}

/* A size change: the bytes past the new end (if it shrinks) and the old size are journaled. */
static uint64_t resize_len(int fd, uint64_t to) {
    struct stat st;
    if (fstat(fd, &st) != 0) return 0;
    uint64_t size = (uint64_t)st.st_size;
    return to < size ? size - to : 0;
}

int ftruncate(int fd, off_t len) {
    WRITE_WRAP(real_ftruncate(fd, len), (uint64_t)len, resize_len(fd, (uint64_t)len))
}
int ftruncate64(int fd, off64_t len) {
    WRITE_WRAP(real_ftruncate64(fd, len), (uint64_t)len, resize_len(fd, (uint64_t)len))
}
int fallocate(int fd, int mode, off_t off, off_t len) {
    WRITE_WRAP(real_fallocate(fd, mode, off, len), (uint64_t)off, (uint64_t)len)
}
int fallocate64(int fd, int mode, off64_t off, off64_t len) {
    WRITE_WRAP(real_fallocate64(fd, mode, off, len), (uint64_t)off, (uint64_t)len)
}
int posix_fallocate(int fd, off_t off, off_t len) {
    WRITE_WRAP(real_posix_fallocate(fd, off, len), (uint64_t)off, (uint64_t)len)
}
int posix_fallocate64(int fd, off64_t off, off64_t len) {
    WRITE_WRAP(real_posix_fallocate64(fd, off, len), (uint64_t)off, (uint64_t)len)
}

static int path_truncate(const char *path, uint64_t len, int is64) {
    ensure();
    char abs[PATH_MAX];
    if (!enabled || absolute(AT_FDCWD, path, abs) != 0 || !under_root(abs)) {
        return is64 ? real_truncate64(path, (off64_t)len) : real_truncate(path, (off_t)len);
    }
    /* Through a descriptor, so the change is journaled like ftruncate. */
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    int r = ftruncate(fd, (off_t)len);
    int e = errno;
    close(fd);
    errno = e;
    return r;
}
int truncate(const char *path, off_t len) { return path_truncate(path, (uint64_t)len, 0); }
int truncate64(const char *path, off64_t len) { return path_truncate(path, (uint64_t)len, 1); }

/* ---- syncs ---- */

static int do_sync(int fd, int data_only) {
    ensure();
    int watched = fd >= 0 && fd < MAX_FDS && fds[fd].tracked;
    if (!watched) return data_only ? real_fdatasync(fd) : real_fsync(fd);
    pthread_mutex_lock(&lock);
    uint64_t upto = jpos;
    uint64_t ino = fds[fd].ino;
    syncs_in_flight++;
    pthread_mutex_unlock(&lock);
    if (sync_delay_us) usleep(sync_delay_us);
    int r = data_only ? real_fdatasync(fd) : real_fsync(fd);
    int e = errno;
    pthread_mutex_lock(&lock);
    syncs_in_flight--;
    if (r == 0) synced(ino, upto, 0);
    pthread_mutex_unlock(&lock);
    errno = e;
    return r;
}
int fsync(int fd) { return do_sync(fd, 0); }
int fdatasync(int fd) { return do_sync(fd, 1); }

void sync(void) {
    ensure();
    if (!enabled) { real_sync(); return; }
    pthread_mutex_lock(&lock);
    uint64_t upto = jpos;
    syncs_in_flight++;
    pthread_mutex_unlock(&lock);
    real_sync();
    pthread_mutex_lock(&lock);
    syncs_in_flight--;
    synced(0, upto, 1);
    pthread_mutex_unlock(&lock);
}
int syncfs(int fd) {
    ensure();
    if (!enabled) return real_syncfs(fd);
    pthread_mutex_lock(&lock);
    uint64_t upto = jpos;
    syncs_in_flight++;
    pthread_mutex_unlock(&lock);
    int r = real_syncfs(fd);
    int e = errno;
    pthread_mutex_lock(&lock);
    syncs_in_flight--;
    if (r == 0) synced(0, upto, 1);
    pthread_mutex_unlock(&lock);
    errno = e;
    return r;
}

/* ---- names ---- */

static int do_rename(int olddir, const char *oldp, int newdir, const char *newp,
                     unsigned int flags, int kind) {
    ensure();
    char a[PATH_MAX], b[PATH_MAX];
    int watch = enabled && absolute(olddir, oldp, a) == 0 && absolute(newdir, newp, b) == 0 &&
                (under_root(a) || under_root(b));
#define CALL_RENAME                                                                 \
    (kind == 0   ? real_rename(oldp, newp)                                          \
     : kind == 1 ? real_renameat(olddir, oldp, newdir, newp)                        \
                 : real_renameat2(olddir, oldp, newdir, newp, flags))
    if (!watch) return CALL_RENAME;
    if (!(under_root(a) && under_root(b))) {
        /* Moving into or out of the tracked tree is not modelled. */
        unsupported("rename across the tracked root");
        return CALL_RENAME;
    }
    pthread_mutex_lock(&lock);
    struct stat st;
    uint64_t ino = 0;
    if (lstat(a, &st) == 0) ino = (uint64_t)st.st_ino;
    char aside[PATH_MAX];
    uint64_t replaced = 0;
    link_aside(b, aside, &replaced);
    struct rec r;
    rec_begin(&r, 'R');
    uint64_t od = parent_ino(a), nd = parent_ino(b);
    put_u64(&r, od);
    put_u64(&r, nd);
    put_u64(&r, ino);
    put_str(&r, a);
    put_str(&r, b);
    put_str(&r, aside);
    uint64_t at = rec_end(&r);
    mark_pending(od, at);
    mark_pending(nd, at);
    int res = CALL_RENAME;
    int e = errno;
    if (res != 0) cancel(at);
    pthread_mutex_unlock(&lock);
    errno = e;
    return res;
#undef CALL_RENAME
}
int rename(const char *a, const char *b) { return do_rename(AT_FDCWD, a, AT_FDCWD, b, 0, 0); }
int renameat(int ad, const char *a, int bd, const char *b) { return do_rename(ad, a, bd, b, 0, 1); }
int renameat2(int ad, const char *a, int bd, const char *b, unsigned int fl) {
    return do_rename(ad, a, bd, b, fl, 2);
}

static int do_unlink(int dirfd, const char *path, int flags, int kind) {
    ensure();
    char abs[PATH_MAX];
    int watch = enabled && absolute(dirfd, path, abs) == 0 && under_root(abs);
#define CALL_UNLINK                                                             \
    (kind == 0 ? real_unlink(path) : kind == 1 ? real_unlinkat(dirfd, path, flags) : real_rmdir(path))
    if (!watch) return CALL_UNLINK;
    int is_dir = kind == 2 || (kind == 1 && (flags & AT_REMOVEDIR));
    pthread_mutex_lock(&lock);
    struct rec r;
    uint64_t dir = parent_ino(abs);
    uint64_t at;
    if (is_dir) {
        struct stat st;
        uint64_t ino = lstat(abs, &st) == 0 ? (uint64_t)st.st_ino : 0;
        rec_begin(&r, 'D');
        put_u64(&r, dir);
        put_u64(&r, ino);
        put_str(&r, abs);
        at = rec_end(&r);
    } else {
        char aside[PATH_MAX];
        uint64_t ino = 0;
        link_aside(abs, aside, &ino);
        rec_begin(&r, 'U');
        put_u64(&r, dir);
        put_u64(&r, ino);
        put_str(&r, abs);
        put_str(&r, aside);
        at = rec_end(&r);
    }
    mark_pending(dir, at);
    int res = CALL_UNLINK;
    int e = errno;
    if (res != 0) cancel(at);
    pthread_mutex_unlock(&lock);
    errno = e;
    return res;
#undef CALL_UNLINK
}
int unlink(const char *p) { return do_unlink(AT_FDCWD, p, 0, 0); }
int unlinkat(int d, const char *p, int fl) { return do_unlink(d, p, fl, 1); }
int rmdir(const char *p) { return do_unlink(AT_FDCWD, p, 0, 2); }

static int do_mkdir(int dirfd, const char *path, mode_t mode, int at) {
    ensure();
    char abs[PATH_MAX];
    int watch = enabled && absolute(dirfd, path, abs) == 0 && under_root(abs);
    if (!watch) return at ? real_mkdirat(dirfd, path, mode) : real_mkdir(path, mode);
    pthread_mutex_lock(&lock);
    int r = at ? real_mkdirat(dirfd, path, mode) : real_mkdir(path, mode);
    int e = errno;
    if (r == 0) journal_created(-1, abs, 'M');
    pthread_mutex_unlock(&lock);
    errno = e;
    return r;
}
int mkdir(const char *p, mode_t m) { return do_mkdir(AT_FDCWD, p, m, 0); }
int mkdirat(int d, const char *p, mode_t m) { return do_mkdir(d, p, m, 1); }

/* ---- not modelled: recorded so the harness refuses the journal ---- */

ssize_t copy_file_range(int in, off64_t *ino, int out, off64_t *outo, size_t n, unsigned int fl) {
    ensure();
    if (tracked_file(out)) unsupported("copy_file_range into a tracked file");
    return real_copy_file_range(in, ino, out, outo, n, fl);
}
ssize_t sendfile(int out, int in, off_t *off, size_t n) {
    ensure();
    if (tracked_file(out)) unsupported("sendfile into a tracked file");
    return real_sendfile(out, in, off, n);
}
ssize_t sendfile64(int out, int in, off64_t *off, size_t n) {
    ensure();
    if (tracked_file(out)) unsupported("sendfile into a tracked file");
    return real_sendfile64(out, in, off, n);
}
void *mmap(void *a, size_t n, int prot, int flags, int fd, off_t off) {
    ensure();
    if (tracked_file(fd) && (prot & PROT_WRITE) && (flags & MAP_SHARED))
        unsupported("shared writable mapping of a tracked file");
    return real_mmap(a, n, prot, flags, fd, off);
}
void *mmap64(void *a, size_t n, int prot, int flags, int fd, off64_t off) {
    ensure();
    if (tracked_file(fd) && (prot & PROT_WRITE) && (flags & MAP_SHARED))
        unsupported("shared writable mapping of a tracked file");
    return real_mmap64(a, n, prot, flags, fd, off);
}
