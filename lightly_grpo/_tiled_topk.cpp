// Exact streaming top-k selection over similarity tiles: the compiled half of
// lightly_grpo.tiled_search.
//
// Python computes one cache-sized tile of scores at a time (torch.mm into a reused buffer) and
// hands it here. Each state row (one query) keeps a buffer of `cap` candidates and a threshold:
// first a lower bound on its k-th best score taken from a sample of the references
// (set_thresholds), then, once its buffer has overflowed and been cut back to the k best with
// nth_element, the exact k-th best seen so far. A tile is scanned with one AVX2 compare per 8
// scores against the thresholds; the rare scores that pass are appended (push_tile). In
// symmetric mode an off-diagonal tile serves both its rows and, read column-wise, the rows of its
// columns, so a leave-one-out search computes each dot product once. finalize sorts each
// query's candidates (radix sort on the score bits) and writes the k best.
//
// Threads take work on demand, never in fixed shares: rows in many small ranges from an atomic
// counter, symmetric tiles in blocks from a scheduler that runs two blocks at once only when
// they write disjoint candidate buffers. A thread that shares its core with another process
// then just does less of the work instead of holding every other thread up (fixed shares and a
// barrier per phase made a search 5.5x slower with one of two cores busy).
//
// Order: score descending, then original id ascending (a total order, so results are exact and
// reproducible: among equal scores the lowest ids win, as in the rest of the index layer).
//
// Plain CPython API, buffers via the buffer protocol (numpy arrays): no numpy or torch headers.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LG_X86 1
#else
#define LG_X86 0
#endif

namespace {

// A candidate is one uint64: the score's bits mapped to an unsigned order in the high half, the
// complement of its id in the low half. Larger key = better (higher score, then lower id), so
// every comparison is one integer compare.
inline uint64_t make_key(float v, int32_t id) {
    if (v == 0.0f) v = 0.0f;  // -0.0 and +0.0 tie, as they do as floats.
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    bits ^= (bits >> 31) ? 0xFFFFFFFFu : 0x80000000u;
    return (static_cast<uint64_t>(bits) << 32) | static_cast<uint32_t>(~static_cast<uint32_t>(id));
}

inline float key_score(uint64_t key) {
    uint32_t bits = static_cast<uint32_t>(key >> 32);
    bits = (bits & 0x80000000u) ? bits ^ 0x80000000u : ~bits;
    float v;
    std::memcpy(&v, &bits, 4);
    return v;
}

inline int64_t key_id(uint64_t key) {
    return static_cast<int32_t>(~static_cast<uint32_t>(key & 0xFFFFFFFFu));
}

struct State {
    uint64_t* entries;  // rows x cap candidate keys
    int32_t* counts;    // rows
    float* thr_v;       // rows: score of the threshold (for the vector pre-filter)
    uint64_t* thr_key;  // rows: a candidate must have a larger key (0: accept everything)
    int64_t cap;
    int64_t k;
};

// Appends (v, id) to state row `row` if it beats the row's threshold; cuts a full buffer back to
// its k best.
inline void consider(const State& s, int64_t row, float v, int32_t id) {
    const uint64_t key = make_key(v, id);
    if (key <= s.thr_key[row]) return;
    uint64_t* buf = s.entries + row * s.cap;
    int32_t c = s.counts[row];
    buf[c++] = key;
    if (c == s.cap) {
        std::nth_element(buf, buf + (s.k - 1), buf + s.cap, std::greater<uint64_t>());
        c = static_cast<int32_t>(s.k);
        s.thr_key[row] = buf[s.k - 1];
        s.thr_v[row] = key_score(buf[s.k - 1]);
    }
    s.counts[row] = c;
}

struct Tile {
    const float* data;
    int64_t m, n, ld;
    float scale;             // score = scale * data - bias
    const float* col_bias;   // n values (row side) or nullptr
    const float* row_bias;   // m values (column side) or nullptr
    const int32_t* row_ids;  // original ids of the tile rows
    const int32_t* col_ids;  // original ids of the tile columns
    int64_t row_state0;      // state row of tile row 0
    int64_t col_state0;      // state row of tile column 0 (symmetric mode)
    bool skip_self;          // skip pairs with equal ids
};

inline float score_at(const Tile& t, int64_t i, int64_t j, bool row_side) {
    float v = t.scale * t.data[i * t.ld + j];
    if (row_side) {
        if (t.col_bias) v -= t.col_bias[j];
    } else {
        if (t.row_bias) v -= t.row_bias[i];
    }
    return v;
}

// ---- row side: tile row i competes for state row row_state0 + i ------------------------------

// Row i of the tile against columns [j0, j1): the scalar scan, and the tail of the vector one.
inline void row_range(const State& s, const Tile& t, int64_t i, int64_t j0, int64_t j1) {
    const int64_t row = t.row_state0 + i;
    const int32_t rid = t.row_ids[i];
    for (int64_t j = j0; j < j1; ++j) {
        const float v = score_at(t, i, j, true);
        if (v < s.thr_v[row]) continue;
        const int32_t cid = t.col_ids[j];
        if (t.skip_self && cid == rid) continue;
        consider(s, row, v, cid);
    }
}

void rows_scalar(const State& s, const Tile& t, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) row_range(s, t, i, 0, t.n);
}

#if LG_X86
__attribute__((target("avx2,fma"))) void rows_avx2(const State& s, const Tile& t, int64_t i0,
                                                   int64_t i1) {
    const __m256 scale = _mm256_set1_ps(t.scale);
    for (int64_t i = i0; i < i1; ++i) {
        const int64_t row = t.row_state0 + i;
        const int32_t rid = t.row_ids[i];
        const float* p = t.data + i * t.ld;
        int64_t j = 0;
        for (; j + 8 <= t.n; j += 8) {
            __m256 v = _mm256_mul_ps(_mm256_loadu_ps(p + j), scale);
            if (t.col_bias) v = _mm256_sub_ps(v, _mm256_loadu_ps(t.col_bias + j));
            // >= keeps ties with the threshold; consider() settles them by id.
            const __m256 thr = _mm256_set1_ps(s.thr_v[row]);
            int mask = _mm256_movemask_ps(_mm256_cmp_ps(v, thr, _CMP_GE_OQ));
            while (mask) {
                const int b = __builtin_ctz(mask);
                mask &= mask - 1;
                const int32_t cid = t.col_ids[j + b];
                if (t.skip_self && cid == rid) continue;
                consider(s, row, score_at(t, i, j + b, true), cid);
            }
        }
        row_range(s, t, i, j, t.n);
    }
}
#endif

// ---- both sides at once: one read of block rows [i0, i1) x columns [j0, j1) ---------------
// Used by symmetric tiles: each block is read once for its rows and its columns. Columns go in
// strips so the column-side candidate buffers being written stay few (cache and TLB).
constexpr int64_t kStrip = 1024;

// Row i of the tile against columns [j0, j1), for its row and for each column: the scalar
// scan, and the tail of the vector one.
inline void both_range(const State& s, const Tile& t, int64_t i, int64_t j0, int64_t j1) {
    const int64_t row = t.row_state0 + i;
    const int32_t rid = t.row_ids[i];
    for (int64_t j = j0; j < j1; ++j) {
        if (t.skip_self && t.col_ids[j] == rid) continue;
        const float vr = score_at(t, i, j, true);
        if (vr >= s.thr_v[row]) consider(s, row, vr, t.col_ids[j]);
        const int64_t col = t.col_state0 + j;
        const float vc = score_at(t, i, j, false);
        if (vc >= s.thr_v[col]) consider(s, col, vc, rid);
    }
}

// A block's rows are read in segments as wide as its column range, one memory stream each; the
// hardware prefetcher needs a few misses to catch each one. Asking for the start of the next
// row's segment while scanning this one hides that (measured: about a third less CPU time for
// segments of 256 floats on two threads).
constexpr int kPrefetchLines = 8;

inline void prefetch_segment(const float* p) {
    for (int l = 0; l < kPrefetchLines; ++l) {
        __builtin_prefetch(reinterpret_cast<const char*>(p) + 64 * l, 0, 3);
    }
}

void block_scalar(const State& s, const Tile& t, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    for (int64_t js = j0; js < j1; js += kStrip) {
        const int64_t je = std::min(j1, js + kStrip);
        for (int64_t i = i0; i < i1; ++i) {
            if (i + 1 < i1) prefetch_segment(t.data + (i + 1) * t.ld + js);
            both_range(s, t, i, js, je);
        }
    }
}

#if LG_X86
__attribute__((target("avx2,fma"))) void block_avx2(const State& s, const Tile& t, int64_t i0,
                                                    int64_t i1, int64_t j0, int64_t j1) {
    const __m256 scale = _mm256_set1_ps(t.scale);
    const float* col_thr = s.thr_v + t.col_state0;
    for (int64_t js = j0; js < j1; js += kStrip) {
        const int64_t je = std::min(j1, js + kStrip);
        for (int64_t i = i0; i < i1; ++i) {
            const int64_t row = t.row_state0 + i;
            const int32_t rid = t.row_ids[i];
            const float* p = t.data + i * t.ld;
            if (i + 1 < i1) prefetch_segment(p + t.ld + js);
            const __m256 rbias = _mm256_set1_ps(t.row_bias ? t.row_bias[i] : 0.0f);
            int64_t j = js;
            for (; j + 8 <= je; j += 8) {
                const __m256 raw = _mm256_mul_ps(_mm256_loadu_ps(p + j), scale);
                __m256 vr = raw;
                if (t.col_bias) vr = _mm256_sub_ps(raw, _mm256_loadu_ps(t.col_bias + j));
                const __m256 vc = _mm256_sub_ps(raw, rbias);
                int mr = _mm256_movemask_ps(
                    _mm256_cmp_ps(vr, _mm256_set1_ps(s.thr_v[row]), _CMP_GE_OQ));
                int mc = _mm256_movemask_ps(
                    _mm256_cmp_ps(vc, _mm256_loadu_ps(col_thr + j), _CMP_GE_OQ));
                while (mr) {
                    const int b = __builtin_ctz(mr);
                    mr &= mr - 1;
                    const int32_t cid = t.col_ids[j + b];
                    if (t.skip_self && cid == rid) continue;
                    consider(s, row, score_at(t, i, j + b, true), cid);
                }
                while (mc) {
                    const int b = __builtin_ctz(mc);
                    mc &= mc - 1;
                    if (t.skip_self && t.col_ids[j + b] == rid) continue;
                    consider(s, t.col_state0 + j + b, score_at(t, i, j + b, false), rid);
                }
            }
            both_range(s, t, i, j, je);
        }
    }
}
#endif

// Off only in tests, so the portable scalar code (what non-x86 machines run) is checked too.
std::atomic<bool> g_vector_scan{true};

bool use_avx2() {
#if LG_X86
    static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return has && g_vector_scan.load(std::memory_order_relaxed);
#else
    return false;
#endif
}

void run_rows(const State& s, const Tile& t, int64_t i0, int64_t i1) {
#if LG_X86
    if (use_avx2()) return rows_avx2(s, t, i0, i1);
#endif
    rows_scalar(s, t, i0, i1);
}

void run_block(const State& s, const Tile& t, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
#if LG_X86
    if (use_avx2()) return block_avx2(s, t, i0, i1, j0, j1);
#endif
    block_scalar(s, t, i0, i1, j0, j1);
}

// The scans are memory-bound: past this many threads they gain nothing, while each call pays
// for starting its threads.
constexpr int kMaxThreads = 16;

// Work is cut into about this many tasks per thread and handed out on demand, so a thread that
// shares its core with another process (and runs at half speed) simply takes fewer tasks: fixed
// equal shares would make every call wait for it.
constexpr int64_t kTasksPerThread = 8;

// Tasks for `items` independent items (rows) on `threads` threads: enough for dynamic balance,
// never more than the items.
int64_t task_count(int64_t items, int threads) {
    return std::max<int64_t>(1, std::min<int64_t>(items, kTasksPerThread * std::max(1, threads)));
}

// Runs fn(task) for every task in [0, tasks) on up to `threads` threads (the calling thread
// included); each thread claims the next unclaimed task from an atomic counter. Threads are
// started per call (no pool), which keeps the module safe to use after a fork. Any number of
// threads computes the same result, so a thread that cannot be started is simply left out.
template <typename F>
void parallel(int threads, int64_t tasks, F&& fn) {
    threads = static_cast<int>(std::max<int64_t>(
        1, std::min<int64_t>({static_cast<int64_t>(threads), tasks, kMaxThreads})));
    if (threads == 1) {
        for (int64_t task = 0; task < tasks; ++task) fn(task);
        return;
    }
    std::atomic<int64_t> next{0};
    auto work = [&] {
        for (int64_t task; (task = next.fetch_add(1, std::memory_order_relaxed)) < tasks;) {
            fn(task);
        }
    };
    std::vector<std::thread> pool;
    pool.reserve(threads - 1);
    for (int w = 1; w < threads; ++w) {
        try {
            pool.emplace_back(work);
        } catch (const std::system_error&) {
            break;  // Out of threads: the ones running (this one at least) finish the work.
        }
    }
    work();
    for (auto& th : pool) th.join();
}

// Hands out the blocks of a symmetric tile cut into row bands x column bands. Block (r, c)
// writes the candidate buffers of row band r (row side) and column band c (column side), so two
// blocks may run at once only if they share neither band. A thread claims any block whose two
// bands are both free; it waits only when every remaining block conflicts with a running one,
// which with more bands than threads happens only near the end of a tile. No thread ever waits
// for a phase to end, so a slow thread delays only the blocks it holds.
class BlockScheduler {
   public:
    static constexpr int kMaxBands = 64;  // one bit per band in a uint64_t

    BlockScheduler(int rows, int cols) : rows_(rows), cols_(cols), unclaimed_(int64_t(rows) * cols) {
        free_rows_ = all(rows);
        free_cols_ = all(cols);
        for (int c = 0; c < cols; ++c) {
            todo_[c] = free_rows_;
            col_left_[c] = rows;
        }
        for (int r = 0; r < rows; ++r) row_left_[r] = cols;
    }

    // Claims a block (r, c); false when every block has been claimed.
    bool claim(int& r, int& c) {
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            if (unclaimed_ == 0) return false;
            if (pick(r, c)) {
                todo_[c] &= ~(uint64_t(1) << r);
                free_rows_ &= ~(uint64_t(1) << r);
                free_cols_ &= ~(uint64_t(1) << c);
                --row_left_[r];
                --col_left_[c];
                --unclaimed_;
                return true;
            }
            cv_.wait(lock);  // Blocks (no spinning): the core goes to whoever can use it.
        }
    }

    // Frees the bands of a finished block.
    void release(int r, int c) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            free_rows_ |= uint64_t(1) << r;
            free_cols_ |= uint64_t(1) << c;
        }
        cv_.notify_all();
    }

   private:
    static uint64_t all(int bands) {
        return bands == 64 ? ~uint64_t(0) : (uint64_t(1) << bands) - 1;
    }

    // The free column band with the most blocks left (column bands are the fewer, so the scarce
    // ones: one left over with many blocks would end the tile on one thread), then its free row
    // band with the most blocks left.
    bool pick(int& r, int& c) const {
        int best_c = -1;
        for (uint64_t cols = free_cols_; cols; cols &= cols - 1) {
            const int j = __builtin_ctzll(cols);
            if ((todo_[j] & free_rows_) && (best_c < 0 || col_left_[j] > col_left_[best_c])) {
                best_c = j;
            }
        }
        if (best_c < 0) return false;
        int best_r = -1;
        for (uint64_t rows = todo_[best_c] & free_rows_; rows; rows &= rows - 1) {
            const int i = __builtin_ctzll(rows);
            if (best_r < 0 || row_left_[i] > row_left_[best_r]) best_r = i;
        }
        r = best_r;
        c = best_c;
        return true;
    }

    std::mutex mutex_;
    std::condition_variable cv_;
    int rows_, cols_;
    int64_t unclaimed_;
    uint64_t todo_[kMaxBands];  // per column band: row bands of its unclaimed blocks
    int row_left_[kMaxBands];   // unclaimed blocks per row band
    int col_left_[kMaxBands];   // unclaimed blocks per column band
    uint64_t free_rows_ = 0, free_cols_ = 0;  // bands no running block writes
};

// How a symmetric m x n tile is cut on `threads` threads. More bands than threads, so a free
// pair is almost always there; column bands are fewer than row bands and at least
// kMinBandCols wide because a block's rows are read in segments as wide as its column band,
// and short segments (a few cache lines) read memory measurably slower. Row bands cost
// nothing of the kind. {1, 1}: one block on one thread.
constexpr int kRowBandsPerThread = 4;
constexpr int kColBandsPerThread = 2;
constexpr int64_t kMinBandRows = 32;
constexpr int64_t kMinBandCols = 256;

struct Bands {
    int rows, cols;
};

Bands symmetric_bands(int64_t m, int64_t n, int threads) {
    if (threads <= 1) return {1, 1};
    const int64_t p = std::min(threads, kMaxThreads);
    const int64_t max = BlockScheduler::kMaxBands;
    const auto rows = std::min<int64_t>({kRowBandsPerThread * p, m / kMinBandRows, max});
    const auto cols = std::min<int64_t>({kColBandsPerThread * p, n / kMinBandCols, max});
    // One band on either side puts every block in it: they could only run one at a time.
    if (rows < 2 || cols < 2) return {1, 1};
    return {static_cast<int>(rows), static_cast<int>(cols)};
}

// ---- buffer helpers --------------------------------------------------------------------------

struct Buffers {
    std::vector<Py_buffer> views;
    ~Buffers() {
        for (auto& v : views) PyBuffer_Release(&v);
    }
    // Returns nullptr (with a Python error set) when obj is not a buffer of `count` items of
    // `itemsize` bytes.
    void* get(PyObject* obj, const char* name, Py_ssize_t count, Py_ssize_t itemsize,
              bool writable) {
        Py_buffer view;
        int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
        if (PyObject_GetBuffer(obj, &view, flags) != 0) return nullptr;
        views.push_back(view);
        if (view.len != count * itemsize) {
            PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, expected %zd (%zd x %zd)", name,
                         view.len, count * itemsize, count, itemsize);
            return nullptr;
        }
        return view.buf;
    }
};

bool make_state(Buffers& b, PyObject* entries, PyObject* counts, PyObject* thr_v,
                PyObject* thr_key, Py_ssize_t rows, Py_ssize_t cap, Py_ssize_t k, State& s) {
    if (k < 1 || cap <= k) {
        PyErr_Format(PyExc_ValueError, "need 1 <= k < cap, got k=%zd, cap=%zd", k, cap);
        return false;
    }
    s.entries = static_cast<uint64_t*>(b.get(entries, "entries", rows * cap, 8, true));
    if (!s.entries) return false;
    s.counts = static_cast<int32_t*>(b.get(counts, "counts", rows, 4, true));
    if (!s.counts) return false;
    s.thr_v = static_cast<float*>(b.get(thr_v, "thr_v", rows, 4, true));
    if (!s.thr_v) return false;
    s.thr_key = static_cast<uint64_t*>(b.get(thr_key, "thr_key", rows, 8, true));
    if (!s.thr_key) return false;
    s.cap = cap;
    s.k = k;
    return true;
}

// push_tile(entries, counts, thr_v, thr_key, rows, cap, k,
//           tile, m, n, ld, scale, col_bias, row_bias, row_ids, col_ids,
//           row_state0, col_state0, skip_self, threads)
// col_state0 < 0: rows only. col_bias / row_bias may be None.
PyObject* push_tile(PyObject*, PyObject* args) {
    PyObject *entries, *counts, *thr_v, *thr_key, *tile, *col_bias, *row_bias, *row_ids, *col_ids;
    Py_ssize_t rows, cap, k, m, n, ld, row_state0, col_state0;
    float scale;
    int skip_self, threads;
    if (!PyArg_ParseTuple(args, "OOOOnnnOnnnfOOOOnnpi", &entries, &counts, &thr_v, &thr_key,
                          &rows, &cap, &k, &tile, &m, &n, &ld, &scale, &col_bias, &row_bias,
                          &row_ids, &col_ids, &row_state0, &col_state0, &skip_self, &threads))
        return nullptr;
    Buffers b;
    State s;
    if (!make_state(b, entries, counts, thr_v, thr_key, rows, cap, k, s)) return nullptr;
    if (m < 1 || n < 1 || ld < n) {
        PyErr_Format(PyExc_ValueError, "bad tile shape m=%zd n=%zd ld=%zd", m, n, ld);
        return nullptr;
    }
    const bool symmetric = col_state0 >= 0;
    if (row_state0 < 0 || row_state0 + m > rows || (symmetric && col_state0 + n > rows)) {
        PyErr_Format(PyExc_ValueError, "tile rows/columns outside the state (rows=%zd)", rows);
        return nullptr;
    }
    Tile t;
    // The tile buffer may be larger than m x ld (a reused buffer); check it is large enough.
    {
        Py_buffer view;
        if (PyObject_GetBuffer(tile, &view, PyBUF_C_CONTIGUOUS) != 0) return nullptr;
        b.views.push_back(view);
        if (view.len < static_cast<Py_ssize_t>(((m - 1) * ld + n) * 4)) {
            PyErr_Format(PyExc_ValueError, "tile holds %zd bytes, too small for %zd x %zd (ld %zd)",
                         view.len, m, n, ld);
            return nullptr;
        }
        t.data = static_cast<const float*>(view.buf);
    }
    t.m = m;
    t.n = n;
    t.ld = ld;
    t.scale = scale;
    t.col_bias = nullptr;
    t.row_bias = nullptr;
    if (col_bias != Py_None) {
        t.col_bias = static_cast<const float*>(b.get(col_bias, "col_bias", n, 4, false));
        if (!t.col_bias) return nullptr;
    }
    if (row_bias != Py_None) {
        t.row_bias = static_cast<const float*>(b.get(row_bias, "row_bias", m, 4, false));
        if (!t.row_bias) return nullptr;
    }
    t.row_ids = static_cast<const int32_t*>(b.get(row_ids, "row_ids", m, 4, false));
    if (!t.row_ids) return nullptr;
    t.col_ids = static_cast<const int32_t*>(b.get(col_ids, "col_ids", n, 4, false));
    if (!t.col_ids) return nullptr;
    t.row_state0 = row_state0;
    t.col_state0 = col_state0;
    t.skip_self = skip_self != 0;

    Py_BEGIN_ALLOW_THREADS;
    if (!symmetric) {
        // Disjoint row ranges per task.
        const int64_t parts = task_count(m, threads);
        parallel(threads, parts, [&](int64_t task) {
            const int64_t i0 = m * task / parts, i1 = m * (task + 1) / parts;
            run_rows(s, t, i0, i1);
        });
    } else {
        // Row side and column side touch disjoint state rows (the tile's rows and columns
        // belong to different bands). The tile is cut into bands x bands blocks, each read once
        // for both sides; the scheduler never runs two blocks that write the same buffers.
        const Bands bands = symmetric_bands(m, n, threads);
        auto row_at = [&](int r) { return m * r / bands.rows; };
        auto col_at = [&](int c) {
            return c == bands.cols ? n : ((n * c / bands.cols) & ~int64_t(7));
        };
        if (bands.rows == 1) {
            run_block(s, t, 0, m, 0, n);
        } else {
            BlockScheduler scheduler(bands.rows, bands.cols);
            // At most one running block per column band.
            const int workers = std::min(threads, bands.cols);
            parallel(workers, workers, [&](int64_t) {  // one task per thread: claim until done
                for (int r, c; scheduler.claim(r, c);) {
                    run_block(s, t, row_at(r), row_at(r + 1), col_at(c), col_at(c + 1));
                    scheduler.release(r, c);
                }
            });
        }
    }
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

int64_t count_at_least_scalar(const float* v, int64_t n, float t) {
    int64_t c = 0;
    for (int64_t j = 0; j < n; ++j) c += v[j] >= t;
    return c;
}

#if LG_X86
__attribute__((target("avx2,popcnt"))) int64_t count_at_least_avx2(const float* v, int64_t n,
                                                                  float t) {
    const __m256 tv = _mm256_set1_ps(t);
    int64_t c = 0, j = 0;
    for (; j + 8 <= n; j += 8) {
        c += __builtin_popcount(
            _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(v + j), tv, _CMP_GE_OQ)));
    }
    return c + count_at_least_scalar(v + j, n - j, t);
}
#endif

void min_max_scalar(const float* v, int64_t n, float& lo, float& hi) {
    for (int64_t j = 0; j < n; ++j) {
        lo = std::min(lo, v[j]);
        hi = std::max(hi, v[j]);
    }
}

#if LG_X86
__attribute__((target("avx2"))) void min_max_avx2(const float* v, int64_t n, float& lo,
                                                  float& hi) {
    __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 x = _mm256_loadu_ps(v + j);
        vlo = _mm256_min_ps(vlo, x);
        vhi = _mm256_max_ps(vhi, x);
    }
    alignas(32) float a[8], b[8];
    _mm256_store_ps(a, vlo);
    _mm256_store_ps(b, vhi);
    for (int l = 0; l < 8; ++l) {
        lo = std::min(lo, a[l]);
        hi = std::max(hi, b[l]);
    }
    min_max_scalar(v + j, n - j, lo, hi);
}
#endif

int64_t count_at_least(const float* v, int64_t n, float t) {
#if LG_X86
    if (use_avx2()) return count_at_least_avx2(v, n, t);
#endif
    return count_at_least_scalar(v, n, t);
}

// A value t with at least `rank` of the n values >= t and at most about rank * 1.03 + 1 of them
// (or t within (max - min) / 2**16 of the rank-th largest): bisection with vectorised counting,
// much cheaper than a selection over the thousands of values of a sample row.
float rank_lower_bound(const float* v, int64_t n, int64_t rank) {
    // -inf marks the excluded self score; it never counts, so it must not set the range.
    float lo = std::numeric_limits<float>::infinity(), hi = -lo;
#if LG_X86
    if (use_avx2()) {
        min_max_avx2(v, n, lo, hi);
    } else {
        min_max_scalar(v, n, lo, hi);
    }
#else
    min_max_scalar(v, n, lo, hi);
#endif
    if (lo == -std::numeric_limits<float>::infinity()) {
        float second = std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < n; ++j) {
            if (v[j] != lo) second = std::min(second, v[j]);
        }
        lo = second;
    }
    // Invariant: count(>= lo) >= rank; count(>= hi) < rank unless hi is the rank-th largest.
    if (count_at_least(v, n, hi) >= rank) return hi;
    const int64_t enough = rank + rank / 32 + 1;
    for (int it = 0; it < 16; ++it) {
        const float mid = lo + (hi - lo) * 0.5f;
        if (!(mid > lo && mid < hi)) break;
        const int64_t c = count_at_least(v, n, mid);
        if (c >= rank) {
            lo = mid;
            if (c <= enough) break;
        } else {
            hi = mid;
        }
    }
    return lo;
}

// set_thresholds(entries, counts, thr_v, thr_key, rows, cap, k, tile, m, n, ld, scale, col_bias,
//                row_ids, col_ids, row_state0, skip_self, rank, threads)
// Starts each tile row's state (if it is still empty) at the rank-th best score of the row, a
// random sample of the references: lower scores are never pushed. The caller picks the rank so
// that, with high probability, at least k of all scores reach it; rows where fewer do end with
// fewer than k candidates and are searched again without a threshold (see tiled_search.py).
PyObject* set_thresholds(PyObject*, PyObject* args) {
    PyObject *entries, *counts, *thr_v, *thr_key, *tile, *col_bias, *row_ids, *col_ids;
    Py_ssize_t rows, cap, k, m, n, ld, row_state0, rank;
    float scale;
    int skip_self, threads;
    if (!PyArg_ParseTuple(args, "OOOOnnnOnnnfOOOnpni", &entries, &counts, &thr_v, &thr_key, &rows,
                          &cap, &k, &tile, &m, &n, &ld, &scale, &col_bias, &row_ids, &col_ids,
                          &row_state0, &skip_self, &rank, &threads))
        return nullptr;
    Buffers b;
    State s;
    if (!make_state(b, entries, counts, thr_v, thr_key, rows, cap, k, s)) return nullptr;
    if (m < 1 || n < 1 || ld < n || rank < 1 || row_state0 < 0 || row_state0 + m > rows) {
        PyErr_Format(PyExc_ValueError, "bad threshold tile m=%zd n=%zd ld=%zd rank=%zd", m, n, ld,
                     rank);
        return nullptr;
    }
    auto* data = static_cast<const float*>(b.get(tile, "tile", m * ld, 4, false));
    if (!data) return nullptr;
    const float* cb = nullptr;
    if (col_bias != Py_None) {
        cb = static_cast<const float*>(b.get(col_bias, "col_bias", n, 4, false));
        if (!cb) return nullptr;
    }
    auto* rids = static_cast<const int32_t*>(b.get(row_ids, "row_ids", m, 4, false));
    if (!rids) return nullptr;
    auto* cids = static_cast<const int32_t*>(b.get(col_ids, "col_ids", n, 4, false));
    if (!cids) return nullptr;
    Py_BEGIN_ALLOW_THREADS;
    const int64_t parts = task_count(m, threads);
    parallel(threads, parts, [&](int64_t task) {
        std::vector<float> vals(n);
        for (int64_t i = m * task / parts; i < m * (task + 1) / parts; ++i) {
            const int64_t row = row_state0 + i;
            if (s.counts[row] != 0) continue;  // Already streaming: keep its exact threshold.
            const float* p = data + i * ld;
            for (int64_t j = 0; j < n; ++j) vals[j] = scale * p[j];
            if (cb) {
                for (int64_t j = 0; j < n; ++j) vals[j] -= cb[j];
            }
            int64_t c = n;
            if (skip_self) {
                for (int64_t j = 0; j < n; ++j) {
                    if (cids[j] == rids[i]) {
                        vals[j] = -std::numeric_limits<float>::infinity();  // never counted
                        --c;
                    }
                }
            }
            if (rank > c) continue;  // Sample too small: no threshold.
            const float t = rank_lower_bound(vals.data(), n, rank);
            // Key of (t, id 2**31 - 1): every real candidate scoring >= t passes.
            s.thr_key[row] = make_key(t, std::numeric_limits<int32_t>::max());
            s.thr_v[row] = t;
        }
    });
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

// Sorts keys descending: an LSD radix sort over the bytes of the score half (stable, byte by
// byte from the least significant), skipping bytes every key shares (the scores of one query
// share their sign and most of their exponent), then equal scores (rare) by id. About 4x faster
// than std::sort for the few hundred to few thousand candidates of a query. Returns the buffer
// holding the result (a or tmp).
uint64_t* sort_desc(uint64_t* a, uint64_t* tmp, int64_t n) {
    for (int shift = 32; shift < 64; shift += 8) {
        int64_t count[256] = {0};
        for (int64_t i = 0; i < n; ++i) ++count[((~a[i]) >> shift) & 0xFF];
        if (count[((~a[0]) >> shift) & 0xFF] == n) continue;
        int64_t pos = 0;
        for (auto& c : count) {
            const int64_t here = c;
            c = pos;
            pos += here;
        }
        for (int64_t i = 0; i < n; ++i) tmp[count[((~a[i]) >> shift) & 0xFF]++] = a[i];
        std::swap(a, tmp);
    }
    for (int64_t i = 0; i < n;) {
        int64_t j = i + 1;
        while (j < n && (a[j] >> 32) == (a[i] >> 32)) ++j;
        if (j - i > 1) std::sort(a + i, a + j, std::greater<uint64_t>());
        i = j;
    }
    return a;
}

// finalize(entries, counts, thr_v, thr_key, rows, cap, k, state_rows, num, out_values, out_ids,
//          threads)
// Writes the k best candidates of each listed state row, best first, into row r of the outputs
// (float32 and int64, num x k). Returns the number of rows with fewer than k candidates (their
// missing places hold -inf and -1).
PyObject* finalize(PyObject*, PyObject* args) {
    PyObject *entries, *counts, *thr_v, *thr_key, *state_rows, *out_values, *out_ids;
    Py_ssize_t rows, cap, k, num;
    int threads;
    if (!PyArg_ParseTuple(args, "OOOOnnnOnOOi", &entries, &counts, &thr_v, &thr_key, &rows, &cap,
                          &k, &state_rows, &num, &out_values, &out_ids, &threads))
        return nullptr;
    Buffers b;
    State s;
    if (!make_state(b, entries, counts, thr_v, thr_key, rows, cap, k, s)) return nullptr;
    auto* which = static_cast<const int32_t*>(b.get(state_rows, "state_rows", num, 4, false));
    if (!which) return nullptr;
    auto* values = static_cast<float*>(b.get(out_values, "out_values", num * k, 4, true));
    if (!values) return nullptr;
    auto* ids = static_cast<int64_t*>(b.get(out_ids, "out_ids", num * k, 8, true));
    if (!ids) return nullptr;
    for (Py_ssize_t r = 0; r < num; ++r) {
        if (which[r] < 0 || which[r] >= rows) {
            PyErr_Format(PyExc_ValueError, "state row %d outside [0, %zd)", which[r], rows);
            return nullptr;
        }
        if (s.counts[which[r]] < 0 || s.counts[which[r]] > cap) {
            PyErr_Format(PyExc_ValueError, "state row %d holds %d candidates, capacity %zd",
                         which[r], s.counts[which[r]], cap);
            return nullptr;
        }
    }
    std::atomic<int64_t> short_rows{0};
    Py_BEGIN_ALLOW_THREADS;
    const int64_t parts = task_count(num, threads);
    parallel(threads, parts, [&](int64_t task) {
        std::vector<uint64_t> tmp(s.cap);
        for (int64_t r = num * task / parts; r < num * (task + 1) / parts; ++r) {
            const int64_t c = s.counts[which[r]];
            const int64_t keep = std::min<int64_t>(c, s.k);
            if (c == 0) {
                short_rows.fetch_add(1, std::memory_order_relaxed);
                for (int64_t j = 0; j < s.k; ++j) {
                    values[r * s.k + j] = -std::numeric_limits<float>::infinity();
                    ids[r * s.k + j] = -1;
                }
                continue;
            }
            const uint64_t* buf =
                sort_desc(s.entries + static_cast<int64_t>(which[r]) * s.cap, tmp.data(), c);
            for (int64_t j = 0; j < keep; ++j) {
                values[r * s.k + j] = key_score(buf[j]);
                ids[r * s.k + j] = key_id(buf[j]);
            }
            for (int64_t j = keep; j < s.k; ++j) {
                values[r * s.k + j] = -std::numeric_limits<float>::infinity();
                ids[r * s.k + j] = -1;
            }
            if (keep < s.k) short_rows.fetch_add(1, std::memory_order_relaxed);
        }
    });
    Py_END_ALLOW_THREADS;
    return PyLong_FromLongLong(short_rows.load());
}

// set_vector_scan(enabled) -> previous setting (True also where the CPU has no AVX2). For tests:
// False runs the scalar code paths.
PyObject* set_vector_scan(PyObject*, PyObject* args) {
    int enabled;
    if (!PyArg_ParseTuple(args, "p", &enabled)) return nullptr;
    return PyBool_FromLong(g_vector_scan.exchange(enabled != 0));
}

// symmetric_bands(m, n, threads) -> (row bands, column bands) a symmetric m x n tile is cut
// into on `threads` threads ((1, 1): one block, no scheduler). For tests and benchmarks.
PyObject* py_symmetric_bands(PyObject*, PyObject* args) {
    Py_ssize_t m, n;
    int threads;
    if (!PyArg_ParseTuple(args, "nni", &m, &n, &threads)) return nullptr;
    if (m < 1 || n < 1) {
        PyErr_Format(PyExc_ValueError, "bad tile shape m=%zd n=%zd", m, n);
        return nullptr;
    }
    const Bands bands = symmetric_bands(m, n, threads);
    return Py_BuildValue("(ii)", bands.rows, bands.cols);
}

PyMethodDef methods[] = {
    {"push_tile", push_tile, METH_VARARGS, "Streams one score tile into the top-k state."},
    {"set_thresholds", set_thresholds, METH_VARARGS, "Starts rows at a sampled threshold."},
    {"finalize", finalize, METH_VARARGS, "Writes the sorted top-k of the given state rows."},
    {"set_vector_scan", set_vector_scan, METH_VARARGS, "Turns the AVX2 scan on or off (tests)."},
    {"symmetric_bands", py_symmetric_bands, METH_VARARGS,
     "Row and column bands of a symmetric tile's blocks (tests)."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "_tiled_topk",
    "Exact streaming top-k over score tiles.",
    -1,
    methods,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
};

}  // namespace

PyMODINIT_FUNC PyInit__tiled_topk(void) { return PyModule_Create(&module); }
