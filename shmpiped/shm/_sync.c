/*
 * shmpiped.shm._sync: the few operations on shared memory that Python cannot
 * express safely or cheaply: ordered 64-bit loads and stores, the publish /
 * wait handshake of a stream (futex based, no syscall when nobody waits), the
 * slot seqlock and the per-frame telemetry update of a worker; and the two
 * things a segment needs from the kernel beyond a mapping: making a reader's
 * slot area read-only (mprotect) and surviving a segment that someone
 * truncated under us (the SIGBUS shield, below).
 *
 * Every function takes raw addresses inside a mapping that the Python side
 * keeps alive (shmpiped.shm.segment.Segment); nothing here allocates or keeps
 * references.  Layout offsets are passed in by the Python side, which owns
 * the layout (shmpiped/shm/layout.py); only the offsets named below are fixed
 * here, and layout.py asserts them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Stream control block, relative to the stream header address. */
#define STREAM_SEQ_OFFSET 1024      /* u64: publications so far */
#define STREAM_FUTEX_OFFSET 1088    /* u32: bumped on publish when waiters > 0 */
#define STREAM_WAITERS_OFFSET 1092  /* u32: readers parked on the futex */

/* Slot header, relative to the slot address. */
#define SLOT_SEQ 0
#define SLOT_FRAME_ID 8
#define SLOT_ORIGIN_NS 16
#define SLOT_WRITE_MONO_NS 24
#define SLOT_WRITE_WALL_NS 32

/* Telemetry record, relative to the record address (see layout.py). */
#define REC_SEQLOCK 0
#define REC_HEARTBEAT_NS 32
#define REC_FRAMES 40
#define REC_LAST_EXEC_NS 48
#define REC_LAST_FRAME_NS 56
#define REC_LAST_OUTPUT_COUNT 88
#define REC_LAST_LATENCY_NS 96
#define REC_EXEC_SUM_NS 104
#define REC_LATENCY_SUM_NS 112
#define REC_LATENCY_COUNT 168
#define REC_EXEC_HIST 256
#define REC_EXEC_SUMSQ_S2 464        /* double: sum of squared exec times, s^2 */
#define REC_LATENCY_HIST 512
#define REC_EXEC_WINDOW 768          /* u32[WINDOW] ns */
#define REC_COMPLETION_WINDOW 4800   /* u64[WINDOW] monotonic ns */
#define REC_LATENCY_WINDOW 12800     /* u64[WINDOW] ns */
#define WINDOW 1000
#define HIST_BUCKETS 26              /* 25 bounds 1us * 10^(k/4), k=0..24, then +Inf */

#define U64(base, off) ((uint64_t *)((char *)(base) + (off)))
#define U32(base, off) ((uint32_t *)((char *)(base) + (off)))

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

static inline uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t wall_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int futex_wait(uint32_t *word, uint32_t expected, uint64_t timeout_ns) {
    struct timespec ts;
    ts.tv_sec = (time_t)(timeout_ns / 1000000000ull);
    ts.tv_nsec = (long)(timeout_ns % 1000000000ull);
    /* Shared (not PRIVATE) futex: the word lives in a mapping shared between processes. */
    return (int)syscall(SYS_futex, word, FUTEX_WAIT, expected, &ts, NULL, 0);
}

static int futex_wake(uint32_t *word, int count) {
    return (int)syscall(SYS_futex, word, FUTEX_WAKE, count, NULL, NULL, 0);
}

static int parse_addr(PyObject *obj, char **out) {
    unsigned long long value = PyLong_AsUnsignedLongLong(obj);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    if (value == 0) {
        PyErr_SetString(PyExc_ValueError, "null shared-memory address");
        return -1;
    }
    *out = (char *)(uintptr_t)value;
    return 0;
}

static int parse_u64(PyObject *obj, uint64_t *out) {
    unsigned long long value = PyLong_AsUnsignedLongLong(obj);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    *out = (uint64_t)value;
    return 0;
}

#define CHECK_NARGS(n, name)                                                   \
    if (nargs != (n)) {                                                        \
        PyErr_Format(PyExc_TypeError, name "() takes %d arguments", (int)(n)); \
        return NULL;                                                           \
    }

/* load_u64(addr) -> int, acquire ordering. */
static PyObject *py_load_u64(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    char *addr;
    CHECK_NARGS(1, "load_u64");
    if (parse_addr(args[0], &addr) < 0) return NULL;
    return PyLong_FromUnsignedLongLong(__atomic_load_n((uint64_t *)addr, __ATOMIC_ACQUIRE));
}

/* store_u64(addr, value), release ordering. */
static PyObject *py_store_u64(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    char *addr;
    uint64_t value;
    CHECK_NARGS(2, "store_u64");
    if (parse_addr(args[0], &addr) < 0 || parse_u64(args[1], &value) < 0) return NULL;
    __atomic_store_n((uint64_t *)addr, value, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

/* add_u64(addr, delta) -> new value, sequentially consistent. */
static PyObject *py_add_u64(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    char *addr;
    uint64_t delta;
    CHECK_NARGS(2, "add_u64");
    if (parse_addr(args[0], &addr) < 0 || parse_u64(args[1], &delta) < 0) return NULL;
    return PyLong_FromUnsignedLongLong(__atomic_add_fetch((uint64_t *)addr, delta, __ATOMIC_SEQ_CST));
}

/*
 * begin_write(slot_addr): invalidate the slot before its payload is
 * overwritten, so that a reader still holding it sees the change and counts
 * an overrun instead of using torn data.
 */
static PyObject *py_begin_write(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    char *slot;
    CHECK_NARGS(1, "begin_write");
    if (parse_addr(args[0], &slot) < 0) return NULL;
    __atomic_store_n(U64(slot, SLOT_SEQ), 0, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

/*
 * publish(stream_addr, slot_addr, seq, frame_id, origin_ns) -> write_mono_ns
 *
 * Stamps the slot header, makes the slot valid (release), publishes the
 * stream's sequence number (one aligned store) and wakes parked readers only
 * when there are any.  origin_ns == 0 means "this frame originates here".
 */
static PyObject *py_publish(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    char *stream, *slot;
    uint64_t seq, frame_id, origin_ns;
    CHECK_NARGS(5, "publish");
    if (parse_addr(args[0], &stream) < 0 || parse_addr(args[1], &slot) < 0 ||
        parse_u64(args[2], &seq) < 0 || parse_u64(args[3], &frame_id) < 0 ||
        parse_u64(args[4], &origin_ns) < 0)
        return NULL;
    uint64_t now = mono_ns();
    *U64(slot, SLOT_FRAME_ID) = frame_id;
    *U64(slot, SLOT_ORIGIN_NS) = origin_ns ? origin_ns : now;
    *U64(slot, SLOT_WRITE_MONO_NS) = now;
    *U64(slot, SLOT_WRITE_WALL_NS) = wall_ns();
    __atomic_store_n(U64(slot, SLOT_SEQ), seq, __ATOMIC_RELEASE);
    /* seq_cst store then seq_cst load of waiters pairs with the reader's
     * seq_cst increment of waiters then load of seq: one of the two sides
     * always sees the other, so no wake-up is lost. */
    __atomic_store_n(U64(stream, STREAM_SEQ_OFFSET), seq, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(U32(stream, STREAM_WAITERS_OFFSET), __ATOMIC_SEQ_CST) != 0) {
        __atomic_add_fetch(U32(stream, STREAM_FUTEX_OFFSET), 1, __ATOMIC_SEQ_CST);
        futex_wake(U32(stream, STREAM_FUTEX_OFFSET), INT_MAX);
    }
    return PyLong_FromUnsignedLongLong(now);
}

/* wake_all(stream_addr): wake every parked reader without publishing. */
static PyObject *py_wake_all(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    char *stream;
    CHECK_NARGS(1, "wake_all");
    if (parse_addr(args[0], &stream) < 0) return NULL;
    __atomic_add_fetch(U32(stream, STREAM_FUTEX_OFFSET), 1, __ATOMIC_SEQ_CST);
    return PyLong_FromLong(futex_wake(U32(stream, STREAM_FUTEX_OFFSET), INT_MAX));
}

/*
 * wait_seq(stream_addr, after, timeout_s, spin_s) -> current seq
 *
 * Returns as soon as the stream's seq exceeds `after`, or when the timeout
 * passes, or on a wake_all(); the caller compares the result with `after`.
 * Spins (busy, with a pause hint) for up to spin_s first, then parks on the
 * futex.  spin_s < 0 spins for the whole timeout (the "spin" strategy).
 * The GIL is released for the whole wait.
 */
static PyObject *py_wait_seq(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    char *stream;
    uint64_t after;
    double timeout_s, spin_s;
    CHECK_NARGS(4, "wait_seq");
    if (parse_addr(args[0], &stream) < 0 || parse_u64(args[1], &after) < 0) return NULL;
    timeout_s = PyFloat_AsDouble(args[2]);
    if (timeout_s == -1.0 && PyErr_Occurred()) return NULL;
    spin_s = PyFloat_AsDouble(args[3]);
    if (spin_s == -1.0 && PyErr_Occurred()) return NULL;

    uint64_t *seq_word = U64(stream, STREAM_SEQ_OFFSET);
    uint32_t *futex_word = U32(stream, STREAM_FUTEX_OFFSET);
    uint32_t *waiters = U32(stream, STREAM_WAITERS_OFFSET);
    uint64_t seq = __atomic_load_n(seq_word, __ATOMIC_ACQUIRE);
    if (seq > after || timeout_s <= 0.0) return PyLong_FromUnsignedLongLong(seq);

    Py_BEGIN_ALLOW_THREADS
    uint64_t start = mono_ns();
    uint64_t deadline = start + (uint64_t)(timeout_s * 1e9);
    uint64_t spin_until = spin_s < 0.0 ? deadline : start + (uint64_t)(spin_s * 1e9);
    if (spin_until > deadline) spin_until = deadline;
    uint32_t futex_start = __atomic_load_n(futex_word, __ATOMIC_ACQUIRE);
    for (;;) {
        seq = __atomic_load_n(seq_word, __ATOMIC_ACQUIRE);
        if (seq > after) break;
        uint64_t now = mono_ns();
        if (now >= deadline) break;
        if (now < spin_until) {
            if (__atomic_load_n(futex_word, __ATOMIC_ACQUIRE) != futex_start) break; /* wake_all */
            for (int i = 0; i < 64; i++) cpu_relax();
            continue;
        }
        uint32_t observed = __atomic_load_n(futex_word, __ATOMIC_ACQUIRE);
        if (observed != futex_start) break; /* a wake_all() arrived while spinning */
        __atomic_add_fetch(waiters, 1, __ATOMIC_SEQ_CST);
        seq = __atomic_load_n(seq_word, __ATOMIC_SEQ_CST);
        int interrupted = 0;
        if (seq <= after && futex_wait(futex_word, observed, deadline - now) != 0)
            interrupted = errno == EINTR;
        __atomic_sub_fetch(waiters, 1, __ATOMIC_SEQ_CST);
        seq = __atomic_load_n(seq_word, __ATOMIC_ACQUIRE);
        /* Woken by a publish (seq moved), a wake_all (futex moved) or a
         * signal (return so that Python runs its handler); else time out. */
        if (interrupted || seq > after || __atomic_load_n(futex_word, __ATOMIC_ACQUIRE) != observed) break;
    }
    Py_END_ALLOW_THREADS
    return PyLong_FromUnsignedLongLong(seq);
}

/* slot_seq(slot_addr) -> the slot's seq, acquire (0 while being rewritten). */
static PyObject *py_slot_seq(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    char *slot;
    CHECK_NARGS(1, "slot_seq");
    if (parse_addr(args[0], &slot) < 0) return NULL;
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return PyLong_FromUnsignedLongLong(__atomic_load_n(U64(slot, SLOT_SEQ), __ATOMIC_ACQUIRE));
}

static inline int hist_bucket(uint64_t ns) {
    /* bounds: 1000 ns * 10^(k/4) for k = 0..24; bucket k holds values <= bound k */
    if (ns <= 1000) return 0;
    double k = ceil(4.0 * log10((double)ns / 1000.0) - 1e-9);
    if (k > HIST_BUCKETS - 2) return HIST_BUCKETS - 1;
    return (int)k;
}

/*
 * record_frame(rec_addr, exec_ns, now_ns, output_count, latency_ns)
 *
 * The whole per-frame telemetry update of a worker, under the record's
 * seqlock: counters, exec-time and latency windows and histograms, the sum
 * of squared exec times (for jitter over any window).
 * latency_ns == 0 records no latency sample.
 */
static PyObject *py_record_frame(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    char *rec;
    uint64_t exec_ns, now_ns, output_count, latency_ns;
    CHECK_NARGS(5, "record_frame");
    if (parse_addr(args[0], &rec) < 0 || parse_u64(args[1], &exec_ns) < 0 ||
        parse_u64(args[2], &now_ns) < 0 || parse_u64(args[3], &output_count) < 0 ||
        parse_u64(args[4], &latency_ns) < 0)
        return NULL;
    uint64_t *lock = U64(rec, REC_SEQLOCK);
    uint64_t frames = *U64(rec, REC_FRAMES);
    __atomic_store_n(lock, *lock + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);

    size_t slot = (size_t)(frames % WINDOW);
    U32(rec, REC_EXEC_WINDOW)[slot] = exec_ns > UINT32_MAX ? UINT32_MAX : (uint32_t)exec_ns;
    U64(rec, REC_COMPLETION_WINDOW)[slot] = now_ns;
    U64(rec, REC_EXEC_HIST)[hist_bucket(exec_ns)] += 1;
    *U64(rec, REC_EXEC_SUM_NS) += exec_ns;
    {   /* a double in a u64 slot: squares of ns overflow a u64 within hours */
        double sumsq, exec_s = (double)exec_ns * 1e-9;
        memcpy(&sumsq, U64(rec, REC_EXEC_SUMSQ_S2), sizeof sumsq);
        sumsq += exec_s * exec_s;
        memcpy(U64(rec, REC_EXEC_SUMSQ_S2), &sumsq, sizeof sumsq);
    }
    *U64(rec, REC_LAST_EXEC_NS) = exec_ns;
    *U64(rec, REC_LAST_FRAME_NS) = now_ns;
    *U64(rec, REC_HEARTBEAT_NS) = now_ns;
    *U64(rec, REC_LAST_OUTPUT_COUNT) = output_count;
    if (latency_ns) {
        uint64_t n = *U64(rec, REC_LATENCY_COUNT);
        U64(rec, REC_LATENCY_WINDOW)[n % WINDOW] = latency_ns;
        U64(rec, REC_LATENCY_HIST)[hist_bucket(latency_ns)] += 1;
        *U64(rec, REC_LATENCY_SUM_NS) += latency_ns;
        *U64(rec, REC_LAST_LATENCY_NS) = latency_ns;
        *U64(rec, REC_LATENCY_COUNT) = n + 1;
    }
    *U64(rec, REC_FRAMES) = frames + 1;

    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(lock, *lock + 1, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

/* monotonic_ns() -> CLOCK_MONOTONIC in ns, the clock of every timestamp in a slot. */
static PyObject *py_monotonic_ns(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    return PyLong_FromUnsignedLongLong(mono_ns());
}

/* copy_record(rec_addr, size, dest_buffer) -> bool: consistent snapshot under the seqlock. */
static PyObject *py_copy_record(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    char *rec;
    uint64_t size;
    Py_buffer dest;
    CHECK_NARGS(3, "copy_record");
    if (parse_addr(args[0], &rec) < 0 || parse_u64(args[1], &size) < 0) return NULL;
    if (PyObject_GetBuffer(args[2], &dest, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if ((uint64_t)dest.len < size) {
        PyBuffer_Release(&dest);
        PyErr_SetString(PyExc_ValueError, "destination buffer too small");
        return NULL;
    }
    int ok = 0;
    uint64_t *lock = U64(rec, REC_SEQLOCK);
    Py_BEGIN_ALLOW_THREADS
    for (int attempt = 0; attempt < 1000 && !ok; attempt++) {
        uint64_t before = __atomic_load_n(lock, __ATOMIC_ACQUIRE);
        if (before & 1) { cpu_relax(); continue; }
        memcpy(dest.buf, rec, (size_t)size);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        ok = __atomic_load_n(lock, __ATOMIC_RELAXED) == before;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&dest);
    return PyBool_FromLong(ok);
}

/*
 * The SIGBUS shield.
 *
 * A MAP_SHARED mapping of a /dev/shm file that someone shrinks (ftruncate,
 * `truncate -s 0`) raises SIGBUS on the next access to a page past the new
 * end of file, wherever that access happens (here, inside NumPy, inside
 * Python's struct module).  A Python signal handler cannot catch it: the
 * faulting instruction would run again.  Processes that must survive such a
 * segment (the manager, the daemon, viewers) register the address range of
 * every segment they map; the handler, on a fault inside a registered range,
 * maps anonymous zero pages over the rest of that range (MAP_FIXED) and
 * returns, so the access is re-executed against memory that exists and reads
 * zeros.  The range's fault count tells the owner afterwards that the segment
 * is damaged.  A fault anywhere else goes to the previous handler (e.g.
 * Python's faulthandler), or kills the process as SIGBUS always did.
 *
 * The table is written only with the GIL held (one writer at a time) and read
 * by the handler with acquire loads: an entry is published by storing its
 * start last, and retired by clearing its start first.
 */
#define GUARD_CAPACITY 4096

typedef struct {
    uintptr_t start;   /* 0: free */
    uintptr_t end;
    uint64_t faults;
} guard_range;

static guard_range guards[GUARD_CAPACITY];
static struct sigaction previous_sigbus;
static int shield_installed = 0;
static uintptr_t page_mask = 0;

static void on_sigbus(int signum, siginfo_t *info, void *context) {
    int saved_errno = errno;
    if (info != NULL && info->si_code > 0) { /* raised by a fault, not sent by kill() */
        uintptr_t addr = (uintptr_t)info->si_addr;
        for (int i = 0; i < GUARD_CAPACITY; i++) {
            uintptr_t start = __atomic_load_n(&guards[i].start, __ATOMIC_ACQUIRE);
            if (start == 0 || addr < start) continue;
            uintptr_t end = __atomic_load_n(&guards[i].end, __ATOMIC_ACQUIRE);
            if (addr >= end) continue;
            uintptr_t page = addr & page_mask;
            void *patch = mmap((void *)page, end - page, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
            if (patch != MAP_FAILED) {
                __atomic_add_fetch(&guards[i].faults, 1, __ATOMIC_RELAXED);
                errno = saved_errno;
                return; /* the access runs again, on the zero pages */
            }
            break;
        }
    }
    errno = saved_errno;
    if (previous_sigbus.sa_flags & SA_SIGINFO) {
        if (previous_sigbus.sa_sigaction != NULL) {
            previous_sigbus.sa_sigaction(signum, info, context);
            return;
        }
    } else if (previous_sigbus.sa_handler != SIG_DFL && previous_sigbus.sa_handler != SIG_IGN) {
        previous_sigbus.sa_handler(signum);
        return;
    }
    /* Nobody else handles it: die of SIGBUS as without the shield. */
    struct sigaction fallback;
    memset(&fallback, 0, sizeof(fallback));
    fallback.sa_handler = SIG_DFL;
    sigemptyset(&fallback.sa_mask);
    sigaction(SIGBUS, &fallback, NULL);
    raise(SIGBUS);
}

/* shield_install() -> bool: install the SIGBUS shield in this process (True if it was not yet). */
static PyObject *py_shield_install(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    CHECK_NARGS(0, "shield_install");
    if (shield_installed) Py_RETURN_FALSE;
    page_mask = ~(uintptr_t)(sysconf(_SC_PAGESIZE) - 1);
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = on_sigbus;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGBUS, &action, &previous_sigbus) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    shield_installed = 1;
    Py_RETURN_TRUE;
}

/* shield_register(addr, nbytes) -> index, or -1 when the table is full. */
static PyObject *py_shield_register(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    char *addr;
    uint64_t nbytes;
    CHECK_NARGS(2, "shield_register");
    if (parse_addr(args[0], &addr) < 0 || parse_u64(args[1], &nbytes) < 0) return NULL;
    for (int i = 0; i < GUARD_CAPACITY; i++) {
        if (__atomic_load_n(&guards[i].start, __ATOMIC_ACQUIRE) != 0) continue;
        guards[i].faults = 0;
        __atomic_store_n(&guards[i].end, (uintptr_t)addr + nbytes, __ATOMIC_RELEASE);
        __atomic_store_n(&guards[i].start, (uintptr_t)addr, __ATOMIC_RELEASE);
        return PyLong_FromLong(i);
    }
    return PyLong_FromLong(-1);
}

static int parse_guard(PyObject *obj, int *out) {
    long index = PyLong_AsLong(obj);
    if (index == -1 && PyErr_Occurred()) return -1;
    if (index < 0 || index >= GUARD_CAPACITY) {
        PyErr_SetString(PyExc_ValueError, "no such guarded range");
        return -1;
    }
    *out = (int)index;
    return 0;
}

/* shield_unregister(index): forget a range before it is unmapped. */
static PyObject *py_shield_unregister(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    int index;
    CHECK_NARGS(1, "shield_unregister");
    if (parse_guard(args[0], &index) < 0) return NULL;
    __atomic_store_n(&guards[index].start, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&guards[index].end, 0, __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

/* shield_faults(index) -> how many faults the shield absorbed in that range. */
static PyObject *py_shield_faults(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    int index;
    CHECK_NARGS(1, "shield_faults");
    if (parse_guard(args[0], &index) < 0) return NULL;
    return PyLong_FromUnsignedLongLong(__atomic_load_n(&guards[index].faults, __ATOMIC_RELAXED));
}

/* protect_readonly(addr, nbytes): make a page-aligned part of a mapping read-only (mprotect). */
static PyObject *py_protect_readonly(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    char *addr;
    uint64_t nbytes;
    CHECK_NARGS(2, "protect_readonly");
    if (parse_addr(args[0], &addr) < 0 || parse_u64(args[1], &nbytes) < 0) return NULL;
    if (nbytes && mprotect(addr, (size_t)nbytes, PROT_READ) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"load_u64", (PyCFunction)(void (*)(void))py_load_u64, METH_FASTCALL, "load_u64(addr) -> int"},
    {"store_u64", (PyCFunction)(void (*)(void))py_store_u64, METH_FASTCALL, "store_u64(addr, value)"},
    {"add_u64", (PyCFunction)(void (*)(void))py_add_u64, METH_FASTCALL, "add_u64(addr, delta) -> int"},
    {"begin_write", (PyCFunction)(void (*)(void))py_begin_write, METH_FASTCALL, "begin_write(slot_addr)"},
    {"publish", (PyCFunction)(void (*)(void))py_publish, METH_FASTCALL,
     "publish(stream_addr, slot_addr, seq, frame_id, origin_ns) -> write_mono_ns"},
    {"wake_all", (PyCFunction)(void (*)(void))py_wake_all, METH_FASTCALL, "wake_all(stream_addr) -> woken"},
    {"wait_seq", (PyCFunction)(void (*)(void))py_wait_seq, METH_FASTCALL,
     "wait_seq(stream_addr, after, timeout_s, spin_s) -> seq"},
    {"slot_seq", (PyCFunction)(void (*)(void))py_slot_seq, METH_FASTCALL, "slot_seq(slot_addr) -> int"},
    {"record_frame", (PyCFunction)(void (*)(void))py_record_frame, METH_FASTCALL,
     "record_frame(rec_addr, exec_ns, now_ns, output_count, latency_ns)"},
    {"monotonic_ns", (PyCFunction)(void (*)(void))py_monotonic_ns, METH_FASTCALL, "monotonic_ns() -> int"},
    {"copy_record", (PyCFunction)(void (*)(void))py_copy_record, METH_FASTCALL,
     "copy_record(rec_addr, size, dest) -> bool"},
    {"shield_install", (PyCFunction)(void (*)(void))py_shield_install, METH_FASTCALL, "shield_install() -> bool"},
    {"shield_register", (PyCFunction)(void (*)(void))py_shield_register, METH_FASTCALL,
     "shield_register(addr, nbytes) -> index (-1: table full)"},
    {"shield_unregister", (PyCFunction)(void (*)(void))py_shield_unregister, METH_FASTCALL,
     "shield_unregister(index)"},
    {"shield_faults", (PyCFunction)(void (*)(void))py_shield_faults, METH_FASTCALL, "shield_faults(index) -> int"},
    {"protect_readonly", (PyCFunction)(void (*)(void))py_protect_readonly, METH_FASTCALL,
     "protect_readonly(addr, nbytes)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_sync", "Ordered shared-memory operations for shmpiped streams.", -1, methods,
};

PyMODINIT_FUNC PyInit__sync(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    PyModule_AddIntConstant(m, "STREAM_SEQ_OFFSET", STREAM_SEQ_OFFSET);
    PyModule_AddIntConstant(m, "STREAM_FUTEX_OFFSET", STREAM_FUTEX_OFFSET);
    PyModule_AddIntConstant(m, "STREAM_WAITERS_OFFSET", STREAM_WAITERS_OFFSET);
    PyModule_AddIntConstant(m, "REC_EXEC_WINDOW", REC_EXEC_WINDOW);
    PyModule_AddIntConstant(m, "REC_COMPLETION_WINDOW", REC_COMPLETION_WINDOW);
    PyModule_AddIntConstant(m, "REC_LATENCY_WINDOW", REC_LATENCY_WINDOW);
    PyModule_AddIntConstant(m, "REC_EXEC_HIST", REC_EXEC_HIST);
    PyModule_AddIntConstant(m, "REC_EXEC_SUMSQ_S2", REC_EXEC_SUMSQ_S2);
    PyModule_AddIntConstant(m, "REC_LATENCY_HIST", REC_LATENCY_HIST);
    PyModule_AddIntConstant(m, "WINDOW", WINDOW);
    PyModule_AddIntConstant(m, "HIST_BUCKETS", HIST_BUCKETS);
    return m;
}
