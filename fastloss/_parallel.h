/* When the kernels may run threaded, and how many threads they get.
 *
 * Every OpenMP region of the kernels asks fastloss_team_size() for its team first and
 * reports to fastloss_team_done() after.  Three hazards of OpenMP are handled here, once:
 *
 * 1. Fork.  libgomp cannot start a parallel region in a child forked after the parent
 *    ran one (GCC bug 60035: the child waits forever for the parent's pool threads).
 *    The parent's use may be anyone's: fastloss's, PyTorch's, another library's sharing
 *    the one libgomp.  A pthread_atfork child handler marks every forked child, which
 *    then runs every kernel serially.
 *
 * 2. Thread creation failure.  libgomp ends the process ("Thread creation failed") when
 *    it cannot start a thread (address-space or process limits).  Before a calling thread
 *    first asks for a team larger than any it had, fastloss starts and joins that many
 *    threads itself, with libgomp's stack size; if some fail, the team is capped at half
 *    of those that started (libgomp then needs no more than that) or runs serially.
 *
 * 3. A busy machine.  A region waits at its closing barrier for every thread; when the
 *    OS has not scheduled one of them (another process on the core), a call that takes
 *    0.3 ms serially can take 15 ms.  The late thread may be a worker or the calling
 *    thread itself (preempted while the idle worker spins at the barrier).  Each thread
 *    offers its pace after its chunk of blocks (time per block since the start; blocks
 *    carry equal work), and a region that ended far later than its threads would have
 *    at the fastest one's pace (elapsed > 2 x paced + 50 us) reports a late thread:
 *    the kernels then run serially for a while and try threads again after it.  The while starts at
 *    10 ms and grows 4x with each late region, up to 2 s; it shrinks by half only after
 *    16 punctual regions in a row.  The asymmetry is the cost: one late region loses a
 *    scheduler time slice (4-50 ms), one punctual region gains half a call (~0.1 ms),
 *    so under steady load a probe is rare enough to cost a few percent, and on a quiet
 *    machine no region is ever late and nothing changes.
 *
 * 4. LLVM's OpenMP runtime (libomp, a clang build) reading a malformed OMP_NUM_THREADS.
 *    libomp 14 aborts on OMP_NUM_THREADS="" (an assertion) and hangs on "abc" when it
 *    initialises; libgomp ignores such values.  fastloss initialises libomp at import
 *    with a malformed value out of its sight and puts the value back at once, so the
 *    environment ends as it was and libomp starts with its default.
 */
#ifndef FASTLOSS_PARALLEL_H
#define FASTLOSS_PARALLEL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <ctype.h>

#if defined(_WIN32)
#  include <windows.h>
#  define FASTLOSS_THREAD_LOCAL __declspec(thread)
#else
#  include <pthread.h>
#  include <time.h>
#  define FASTLOSS_THREAD_LOCAL __thread
#  define FASTLOSS_HAVE_PTHREAD 1
#endif

#if defined(__GNUC__) || defined(__clang__)
#  define FASTLOSS_LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#  define FASTLOSS_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#else
#  define FASTLOSS_LOAD(p) (*(volatile int64_t*)(p))
#  define FASTLOSS_STORE(p, v) (*(volatile int64_t*)(p) = (v))
#endif

/* Monotonic time in nanoseconds. */
static inline int64_t fastloss_now_ns(void) {
#if defined(_WIN32)
    LARGE_INTEGER count, frequency;
    QueryPerformanceCounter(&count);
    QueryPerformanceFrequency(&frequency);
    return (int64_t)((double)count.QuadPart * 1e9 / (double)frequency.QuadPart);
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
#endif
}

/* -- 1. fork ------------------------------------------------------------------------ */

/* Set in a forked child, and by the Python layer in a process that inherited an
 * OpenMP runtime from its parent before fastloss was imported. */
static int64_t fastloss_serial_process = 0;

static void fastloss_mark_forked_child(void) { fastloss_serial_process = 1; }

/* Called once when the module is imported; 0 on success. */
static int fastloss_install_fork_handler(void) {
#if defined(FASTLOSS_HAVE_PTHREAD)
    return pthread_atfork(NULL, NULL, fastloss_mark_forked_child);
#else
    return 0;  /* no fork() on this system */
#endif
}

/* -- 2. thread creation ------------------------------------------------------------- */

/* The largest team a calling thread has probed, and the team it may start; per calling
 * thread, as libgomp keeps one pool of workers per thread that starts regions. */
static FASTLOSS_THREAD_LOCAL int fastloss_probed_team = 1;
static FASTLOSS_THREAD_LOCAL int fastloss_team_cap = 1 << 30;

#if defined(FASTLOSS_HAVE_PTHREAD)
/* libgomp's worker stack size: OMP_STACKSIZE / GOMP_STACKSIZE ("<n>[B|K|M|G]", K when
 * no unit), else the system default.  0 means the default. */
static size_t fastloss_omp_stack_size(void) {
    const char* names[2] = {"OMP_STACKSIZE", "GOMP_STACKSIZE"};
    for (int i = 0; i < 2; i++) {
        const char* text = getenv(names[i]);
        char* end;
        unsigned long long size;
        if (text == NULL) continue;
        while (isspace((unsigned char)*text)) text++;
        size = strtoull(text, &end, 10);
        if (end == text) continue;
        while (isspace((unsigned char)*end)) end++;
        switch (toupper((unsigned char)*end)) {
            case 'B': break;
            case 'M': size <<= 20; break;
            case 'G': size <<= 30; break;
            default: size <<= 10; break;  /* 'K' or no unit */
        }
        return (size_t)size;
    }
    return 0;
}

static void* fastloss_probe_thread_main(void* unused) { (void)unused; return NULL; }

/* Start ``n - 1`` threads at once (as libgomp would for a team of n) and join them;
 * returns 1 + how many started. */
static int fastloss_probe_team(int n) {
    pthread_t* threads = (pthread_t*)malloc((size_t)(n - 1) * sizeof(pthread_t));
    pthread_attr_t attr;
    size_t stack_size = fastloss_omp_stack_size();
    int started = 0;
    if (threads == NULL) return 1;
    if (pthread_attr_init(&attr) != 0) { free(threads); return 1; }
    if (stack_size) pthread_attr_setstacksize(&attr, stack_size);
    while (started < n - 1
           && pthread_create(&threads[started], &attr, fastloss_probe_thread_main, NULL) == 0)
        started++;
    for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
    pthread_attr_destroy(&attr);
    free(threads);
    return started + 1;
}
#else
static int fastloss_probe_team(int n) { return n; }
#endif

/* -- 3. a busy machine -------------------------------------------------------------- */

#define FASTLOSS_BACKOFF_MIN_NS ((int64_t)10000000)     /* 10 ms */
#define FASTLOSS_BACKOFF_MAX_NS ((int64_t)2000000000)   /* 2 s */
#define FASTLOSS_BACKOFF_GROWTH 4
#define FASTLOSS_PUNCTUAL_TO_SHRINK 16
#define FASTLOSS_LATE_SLACK_NS ((int64_t)50000)         /* 50 us */

static int64_t fastloss_serial_until_ns = 0;
static int64_t fastloss_backoff_ns = FASTLOSS_BACKOFF_MIN_NS;
static int64_t fastloss_punctual_streak = 0;
static int64_t fastloss_late_regions = 0;  /* how many late regions were seen */

/* Keep in ``*slot`` the smallest value offered (threads of one region race here). */
static inline void fastloss_keep_fastest(int64_t* slot, int64_t value) {
#if defined(__GNUC__) || defined(__clang__)
    int64_t seen = __atomic_load_n(slot, __ATOMIC_RELAXED);
    while (value < seen
           && !__atomic_compare_exchange_n(slot, &seen, value, 1, __ATOMIC_RELAXED,
                                           __ATOMIC_RELAXED)) {
    }
#elif defined(_WIN32)
    LONG64 seen = *(volatile LONG64*)slot;
    while (value < seen) {
        LONG64 previous = InterlockedCompareExchange64((volatile LONG64*)slot, value, seen);
        if (previous == seen) break;
        seen = previous;
    }
#else
    if (value < *slot) *slot = value;  /* no atomics: a lost race only loosens the check */
#endif
}

/* Whether a region of ``team`` threads that started at ``start``, would have ended at
 * ``paced_end`` had every thread kept the fastest one's pace, and ended at ``end``
 * (ns) waited for a late thread; if so, the kernels run serially for the back-off
 * time. */
static void fastloss_team_done(int team, int64_t start, int64_t paced_end, int64_t end) {
    int64_t backoff = FASTLOSS_LOAD(&fastloss_backoff_ns);
    int64_t streak;
    if (team <= 1) return;
    if (end - start > 2 * (paced_end - start) + FASTLOSS_LATE_SLACK_NS) {
        FASTLOSS_STORE(&fastloss_serial_until_ns, end + backoff);
        backoff *= FASTLOSS_BACKOFF_GROWTH;
        FASTLOSS_STORE(&fastloss_backoff_ns, backoff < FASTLOSS_BACKOFF_MAX_NS
                                             ? backoff : FASTLOSS_BACKOFF_MAX_NS);
        FASTLOSS_STORE(&fastloss_punctual_streak, 0);
        FASTLOSS_STORE(&fastloss_late_regions, FASTLOSS_LOAD(&fastloss_late_regions) + 1);
        return;
    }
    streak = FASTLOSS_LOAD(&fastloss_punctual_streak) + 1;
    if (streak >= FASTLOSS_PUNCTUAL_TO_SHRINK && backoff > FASTLOSS_BACKOFF_MIN_NS) {
        FASTLOSS_STORE(&fastloss_backoff_ns, backoff / 2);
        streak = 0;
    }
    FASTLOSS_STORE(&fastloss_punctual_streak, streak);
}

/* -- 4. libomp and a malformed OMP_NUM_THREADS -------------------------------------- */

#if defined(_OPENMP)
#  include <omp.h>
#endif

#if defined(_OPENMP) && defined(KMP_VERSION_MAJOR) && defined(FASTLOSS_HAVE_PTHREAD)
#  define FASTLOSS_HIDE_MALFORMED_THREADS 1   /* libomp, which cannot take one */
#endif

#if defined(FASTLOSS_HIDE_MALFORMED_THREADS)
/* Whether ``text`` is a list of decimal numbers separated by commas (spaces allowed),
 * the form OpenMP defines for OMP_NUM_THREADS. */
static int fastloss_is_number_list(const char* text) {
    int digits = 0;
    for (;; text++) {
        if (isdigit((unsigned char)*text)) digits++;
        else if (*text == ',' || *text == '\0') {
            if (digits == 0) return 0;
            if (*text == '\0') return 1;
            digits = 0;
        } else if (!isspace((unsigned char)*text)) return 0;
    }
}
#endif

/* Called once when the module is imported. */
static void fastloss_initialise_openmp(void) {
#if defined(FASTLOSS_HIDE_MALFORMED_THREADS)
    const char* value = getenv("OMP_NUM_THREADS");
    char* hidden = NULL;
    if (value != NULL && !fastloss_is_number_list(value)) {
        hidden = strdup(value);
        if (hidden != NULL) unsetenv("OMP_NUM_THREADS");
    }
    (void)omp_get_max_threads();  /* libomp reads its environment now */
    if (hidden != NULL) {
        setenv("OMP_NUM_THREADS", hidden, 1);
        free(hidden);
    }
#endif
}

/* -- the team of a region ----------------------------------------------------------- */

/* The threads a region asking for ``requested`` gets now: 1 in a forked child and while
 * backing off from a busy machine; else ``requested``, capped by what this calling
 * thread was able to start; always 1 in a build without OpenMP. */
static int fastloss_team_size(int requested) {
    int started;
#if !defined(_OPENMP)
    (void)started;
    return 1;  /* built without OpenMP: every region is a plain loop */
#endif
    if (requested <= 1 || FASTLOSS_LOAD(&fastloss_serial_process)) return 1;
    if (fastloss_now_ns() < FASTLOSS_LOAD(&fastloss_serial_until_ns)) return 1;
    if (requested > fastloss_probed_team) {
        started = fastloss_probe_team(requested);
        if (started < requested)
            fastloss_team_cap = started / 2 > 1 ? started / 2 : 1;
        else
            fastloss_team_cap = 1 << 30;
        fastloss_probed_team = requested;
    }
    return requested < fastloss_team_cap ? requested : fastloss_team_cap;
}

#endif
