/* Keyed blake3 of many equal-length inputs at once, sixteen per AVX-512 vector.
 *
 * Written for walrus-p2p from the BLAKE3 specification (compression function, chunk and tree
 * rules, keyed mode). Why it exists: the encoder hashes every symbol of the n x n expanded
 * matrix (10,000 symbols of 56 KB for a 128 MB blob at n = 100). blake3 proper hashes one
 * input at a time and fills its sixteen SIMD lanes with chunks of that input, so the last
 * chunks of each 55-chunk symbol run in part-empty lanes, and every symbol costs a Python call
 * that gives up and takes back the GIL. Symbols of one blob all have the same length, so
 * their trees have the same shape: here lane l carries input l through the same sequence of
 * compressions, every lane full, and one call hashes them all without the GIL.
 *
 * Loaded with ctypes (walrus_p2p.core.merkle), like the ISA-L library; it is checked against
 * the blake3 package when it is loaded, and everything falls back to the blake3 package when
 * it is missing, fails that check, or the CPU lacks AVX-512 (walrus_leaf_hashes returns -1).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

static const uint32_t IV[8] = {0x6A09E667u, 0xBB67AE85u, 0x3C6EF372u, 0xA54FF53Au,
                               0x510E527Fu, 0x9B05688Cu, 0x1F83D9ABu, 0x5BE0CD19u};
enum { CHUNK_START = 1, CHUNK_END = 2, PARENT = 4, ROOT = 8, KEYED_HASH = 16 };
#define CHUNK 1024
#define BLOCK 64
#define LANES 16

#define ADD _mm512_add_epi32
#define XOR _mm512_xor_si512
#define ROR _mm512_ror_epi32
#define G(a, b, c, d, x, y)            \
    a = ADD(ADD(a, b), x);             \
    d = ROR(XOR(d, a), 16);            \
    c = ADD(c, d);                     \
    b = ROR(XOR(b, c), 12);            \
    a = ADD(ADD(a, b), y);             \
    d = ROR(XOR(d, a), 8);             \
    c = ADD(c, d);                     \
    b = ROR(XOR(b, c), 7);

#define ROUND(m0,m1,m2,m3,m4,m5,m6,m7,m8,m9,m10,m11,m12,m13,m14,m15) \
    G(v0, v4, v8, v12, m[m0], m[m1]);  \
    G(v1, v5, v9, v13, m[m2], m[m3]);  \
    G(v2, v6, v10, v14, m[m4], m[m5]); \
    G(v3, v7, v11, v15, m[m6], m[m7]); \
    G(v0, v5, v10, v15, m[m8], m[m9]); \
    G(v1, v6, v11, v12, m[m10], m[m11]); \
    G(v2, v7, v8, v13, m[m12], m[m13]); \
    G(v3, v4, v9, v14, m[m14], m[m15]);

/* One compression in each of the 16 lanes: chaining values cv (word w of every lane in cv[w]),
 * message words m (likewise), the same counter, block length and flags in every lane. The seven
 * rounds take the message words in the order of the BLAKE3 permutation applied 0..6 times. */
__attribute__((target("arch=x86-64-v4"))) static inline void
compress16(__m512i cv[8], const __m512i m[16], uint32_t counter, uint32_t block_len, uint32_t flags)
{
    __m512i v0 = cv[0], v1 = cv[1], v2 = cv[2], v3 = cv[3];
    __m512i v4 = cv[4], v5 = cv[5], v6 = cv[6], v7 = cv[7];
    __m512i v8 = _mm512_set1_epi32((int)IV[0]), v9 = _mm512_set1_epi32((int)IV[1]);
    __m512i v10 = _mm512_set1_epi32((int)IV[2]), v11 = _mm512_set1_epi32((int)IV[3]);
    __m512i v12 = _mm512_set1_epi32((int)counter), v13 = _mm512_setzero_si512();
    __m512i v14 = _mm512_set1_epi32((int)block_len), v15 = _mm512_set1_epi32((int)flags);
    ROUND(0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15)
    ROUND(2,6,3,10,7,0,4,13,1,11,12,5,9,14,15,8)
    ROUND(3,4,10,12,13,2,7,14,6,5,9,0,11,15,8,1)
    ROUND(10,7,12,9,14,3,13,15,4,0,11,2,5,8,1,6)
    ROUND(12,13,9,11,15,10,14,8,7,2,5,3,0,1,6,4)
    ROUND(9,14,11,5,8,12,15,1,13,3,0,10,2,6,4,7)
    ROUND(11,15,5,0,1,9,8,6,14,10,2,12,3,4,7,13)
    cv[0] = XOR(v0, v8); cv[1] = XOR(v1, v9); cv[2] = XOR(v2, v10); cv[3] = XOR(v3, v11);
    cv[4] = XOR(v4, v12); cv[5] = XOR(v5, v13); cv[6] = XOR(v6, v14); cv[7] = XOR(v7, v15);
}

/* Index vectors of the four stages of a 16x16 transpose of 32-bit words: stage s swaps the
 * off-diagonal d x d blocks (d = 8 >> s) between rows i and i + d. Filled once at load. */
static int32_t STAGE_INDEX[4][2][16] __attribute__((aligned(64)));

__attribute__((constructor)) static void fill_stage_index(void)
{
    for (int s = 0; s < 4; s++) {
        int d = 8 >> s;
        for (int j = 0; j < 16; j++) {
            STAGE_INDEX[s][0][j] = (j & d) ? 16 + j - d : j;
            STAGE_INDEX[s][1][j] = (j & d) ? 16 + j : j + d;
        }
    }
}

#define STAGE(s, d)                                                                 \
    {                                                                               \
        const __m512i ilo = _mm512_load_si512(STAGE_INDEX[s][0]);                   \
        const __m512i ihi = _mm512_load_si512(STAGE_INDEX[s][1]);                   \
        for (int i = 0; i < 16; i++) {                                              \
            if (i & d) continue;                                                    \
            __m512i a = r[i], b = r[i + d];                                         \
            r[i] = _mm512_permutex2var_epi32(a, ilo, b);                            \
            r[i + d] = _mm512_permutex2var_epi32(a, ihi, b);                        \
        }                                                                           \
    }

/* rows[i] holds 16 words of lane i; afterwards rows[w] holds word w of every lane. */
__attribute__((target("arch=x86-64-v4"))) static inline void transpose16(__m512i r[16])
{
    STAGE(0, 8) STAGE(1, 4) STAGE(2, 2) STAGE(3, 1)
}

/* Hash the 16 inputs of len bytes in lock step: chunks of 1,024 bytes (blocks of 64, the last
 * block of the input zero-padded to 64 with its true length), chunk chaining values merged into
 * parents as soon as a subtree is complete (the BLAKE3 stack rule: after chunk c, merge once per
 * trailing zero bit of c + 1), and the root flag on the last compression. Digests go to out[l]
 * unless it is NULL. */
__attribute__((target("arch=x86-64-v4"))) static void
hash_group(const uint8_t *const in[LANES], size_t len, const uint32_t key[8], uint8_t *out[LANES])
{
    size_t chunks = len == 0 ? 1 : (len + CHUNK - 1) / CHUNK;
    __m512i keyv[8], stack[64][8], cv[8], m[16];
    int depth = 0;
    for (int w = 0; w < 8; w++) keyv[w] = _mm512_set1_epi32((int)key[w]);
    uint8_t pad[LANES][BLOCK];
    for (size_t c = 0; c < chunks; c++) {
        size_t start = c * CHUNK;
        size_t clen = len - start < CHUNK ? len - start : CHUNK;
        size_t blocks = clen == 0 ? 1 : (clen + BLOCK - 1) / BLOCK;
        memcpy(cv, keyv, sizeof cv);
        for (size_t b = 0; b < blocks; b++) {
            size_t off = start + b * BLOCK;
            size_t blen = clen - b * BLOCK < BLOCK ? clen - b * BLOCK : BLOCK;
            if (blen == BLOCK) {
                for (int l = 0; l < LANES; l++) m[l] = _mm512_loadu_si512(in[l] + off);
            } else {
                for (int l = 0; l < LANES; l++) {
                    memset(pad[l], 0, BLOCK);
                    if (blen) memcpy(pad[l], in[l] + off, blen);
                    m[l] = _mm512_loadu_si512(pad[l]);
                }
            }
            transpose16(m);
            uint32_t flags = KEYED_HASH;
            if (b == 0) flags |= CHUNK_START;
            if (b == blocks - 1) {
                flags |= CHUNK_END;
                if (chunks == 1) flags |= ROOT;
            }
            compress16(cv, m, (uint32_t)c, (uint32_t)blen, flags);
        }
        if (c + 1 < chunks) {
            size_t total = c + 1;
            while ((total & 1) == 0) {
                depth--;
                for (int w = 0; w < 8; w++) { m[w] = stack[depth][w]; m[w + 8] = cv[w]; }
                memcpy(cv, keyv, sizeof cv);
                compress16(cv, m, 0, BLOCK, PARENT | KEYED_HASH);
                total >>= 1;
            }
            memcpy(stack[depth], cv, sizeof cv);
            depth++;
        }
    }
    while (depth > 0) {
        depth--;
        for (int w = 0; w < 8; w++) { m[w] = stack[depth][w]; m[w + 8] = cv[w]; }
        memcpy(cv, keyv, sizeof cv);
        compress16(cv, m, 0, BLOCK, PARENT | KEYED_HASH | (depth == 0 ? ROOT : 0));
    }
    uint32_t words[8][LANES];
    for (int w = 0; w < 8; w++) _mm512_storeu_si512(words[w], cv[w]);
    for (int l = 0; l < LANES; l++)
        if (out[l])
            for (int w = 0; w < 8; w++) memcpy(out[l] + 4 * w, &words[w][l], 4);
}

/* Keyed blake3 (32-byte key) of the count inputs of len bytes each; the 32-byte digest of input
 * i goes to out + 32 * i. Returns 0, or -1 (nothing written) when the CPU has no AVX-512. */
int walrus_leaf_hashes(const uint8_t *const *inputs, size_t count, size_t len,
                       const uint8_t key[32], uint8_t *out)
{
    if (len > ((size_t)1 << 40)) /* the chunk counter here is 32 bits */
        return -1;
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512vl") ||
        !__builtin_cpu_supports("avx512bw") || !__builtin_cpu_supports("avx512dq"))
        return -1;
    uint32_t words[8];
    memcpy(words, key, 32); /* little-endian: x86-64 */
    for (size_t first = 0; first < count; first += LANES) {
        const uint8_t *in[LANES];
        uint8_t *digests[LANES];
        for (int lane = 0; lane < LANES; lane++) {
            size_t index = first + (size_t)lane;
            /* Spare lanes hash the group's first input again; their digests are dropped. */
            in[lane] = index < count ? inputs[index] : inputs[first];
            digests[lane] = index < count ? out + 32 * index : NULL;
        }
        hash_group(in, len, words, digests);
    }
    return 0;
}

#else

int walrus_leaf_hashes(const uint8_t *const *inputs, size_t count, size_t len,
                       const uint8_t key[32], uint8_t *out)
{
    (void)inputs, (void)count, (void)len, (void)key, (void)out;
    return -1;
}

#endif

/* ---- ISA-L block loop -----------------------------------------------------------------------
 * Runs ISA-L's ec_encode_data (its address is passed in: the library is the one in the pyeclib
 * wheel, found by walrus_p2p.core.isal) over the byte range [start, stop) of k source and rows
 * output fragments, one block of `block` bytes at a time, so that the sources of a block stay
 * in the L2 cache while the kernel walks them once per group of outputs. The same kernel calls
 * as a loop in Python, without a Python call (and a release and retake of the GIL) per block.
 * Returns 0, or -1 for arguments out of range (nothing written). */
typedef void (*walrus_ec_encode)(int, int, int, unsigned char *, unsigned char **,
                                 unsigned char **);

int walrus_encode_blocks(void *encode, unsigned char *tables, int k, int rows,
                         const uint64_t *sources, const uint64_t *outputs, size_t start,
                         size_t stop, size_t block)
{
    if (encode == NULL || k < 1 || k > 256 || rows < 1 || rows > 256 || block == 0 ||
        block > ((size_t)1 << 30) || start > stop)
        return -1;
    walrus_ec_encode run = (walrus_ec_encode)encode;
    unsigned char *src[256], *out[256];
    for (size_t offset = start; offset < stop; offset += block) {
        size_t length = stop - offset < block ? stop - offset : block;
        for (int j = 0; j < k; j++)
            src[j] = (unsigned char *)(uintptr_t)sources[j] + offset;
        for (int i = 0; i < rows; i++)
            out[i] = (unsigned char *)(uintptr_t)outputs[i] + offset;
        run((int)length, k, rows, tables, src, out);
    }
    return 0;
}
