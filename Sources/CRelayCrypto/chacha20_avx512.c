/* ChaCha20 (RFC 8439 §2.3-2.4) with AVX-512: 16 or 32 blocks at a time in zmm registers (a
   narrower batch costs as much as 16 blocks on the CPUs measured). Used by aead.c when the CPU has
   AVX512F/VL/BW; libcrypto otherwise. The first block of a message (counter 0) is Poly1305's
   one-time key (RFC 8439 §2.6), so one call gives the key and the encrypted data together instead
   of a separate (scalar) block. */
#include <string.h>
#include <stdlib.h>
#include "chacha20_avx512.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define TARGET __attribute__((target("avx512f,avx512vl,avx512bw")))

static const uint32_t sigma[4] = {0x61707865, 0x3320646e, 0x79622d32, 0x6b206574};

#define QR(a, b, c, d, ADD, XOR, ROL)                \
    a = ADD(a, b); d = XOR(d, a); d = ROL(d, 16);     \
    c = ADD(c, d); b = XOR(b, c); b = ROL(b, 12);     \
    a = ADD(a, b); d = XOR(d, a); d = ROL(d, 8);      \
    c = ADD(c, d); b = XOR(b, c); b = ROL(b, 7);

/* One double round: columns, then diagonals. */
#define ROUND(x, ADD, XOR, ROL)                                    \
    QR(x[0], x[4], x[8], x[12], ADD, XOR, ROL)                     \
    QR(x[1], x[5], x[9], x[13], ADD, XOR, ROL)                     \
    QR(x[2], x[6], x[10], x[14], ADD, XOR, ROL)                    \
    QR(x[3], x[7], x[11], x[15], ADD, XOR, ROL)                    \
    QR(x[0], x[5], x[10], x[15], ADD, XOR, ROL)                    \
    QR(x[1], x[6], x[11], x[12], ADD, XOR, ROL)                    \
    QR(x[2], x[7], x[8], x[13], ADD, XOR, ROL)                     \
    QR(x[3], x[4], x[9], x[14], ADD, XOR, ROL)

#define ROUNDS(x, ADD, XOR, ROL) for (int r = 0; r < 10; r++) { ROUND(x, ADD, XOR, ROL) }

/* Transposes one batch: x[i] lane b holds word i of block b. Within each 128-bit lane L, four
   unpacks give q[j] = words 0-3 of block 4L+j (q[4+j], q[8+j], q[12+j]: words 4-7, 8-11, 12-15);
   the 128-bit shuffles then gather block 4L+j's four quarters. */
TARGET static inline void store16(const __m512i x[16], uint8_t ks[1024]) {
    __m512i q[16];
    for (int g = 0; g < 4; g++) {
        __m512i t0 = _mm512_unpacklo_epi32(x[4 * g], x[4 * g + 1]);
        __m512i t1 = _mm512_unpackhi_epi32(x[4 * g], x[4 * g + 1]);
        __m512i t2 = _mm512_unpacklo_epi32(x[4 * g + 2], x[4 * g + 3]);
        __m512i t3 = _mm512_unpackhi_epi32(x[4 * g + 2], x[4 * g + 3]);
        q[4 * g + 0] = _mm512_unpacklo_epi64(t0, t2);
        q[4 * g + 1] = _mm512_unpackhi_epi64(t0, t2);
        q[4 * g + 2] = _mm512_unpacklo_epi64(t1, t3);
        q[4 * g + 3] = _mm512_unpackhi_epi64(t1, t3);
    }
    for (int j = 0; j < 4; j++) {
        __m512i a = q[j], b = q[4 + j], c = q[8 + j], d = q[12 + j];
        __m512i e0 = _mm512_shuffle_i32x4(a, b, 0x44), e1 = _mm512_shuffle_i32x4(a, b, 0xEE);
        __m512i f0 = _mm512_shuffle_i32x4(c, d, 0x44), f1 = _mm512_shuffle_i32x4(c, d, 0xEE);
        _mm512_storeu_si512((void *)(ks + 64 * (0 + j)), _mm512_shuffle_i32x4(e0, f0, 0x88));
        _mm512_storeu_si512((void *)(ks + 64 * (4 + j)), _mm512_shuffle_i32x4(e0, f0, 0xDD));
        _mm512_storeu_si512((void *)(ks + 64 * (8 + j)), _mm512_shuffle_i32x4(e1, f1, 0x88));
        _mm512_storeu_si512((void *)(ks + 64 * (12 + j)), _mm512_shuffle_i32x4(e1, f1, 0xDD));
    }
}

#define ROL512(v, n) _mm512_rol_epi32(v, n)
static const int lanes[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

/* 16 blocks (counter ctr...ctr+15) of keystream into ks, block after block. */
TARGET static void blocks16(const uint32_t in[16], uint32_t ctr, uint8_t ks[1024]) {
    __m512i x[16], s[16];
    for (int i = 0; i < 16; i++) s[i] = _mm512_set1_epi32((int)in[i]);
    s[12] = _mm512_add_epi32(_mm512_set1_epi32((int)ctr), _mm512_loadu_si512((const void *)lanes));
    for (int i = 0; i < 16; i++) x[i] = s[i];
    ROUNDS(x, _mm512_add_epi32, _mm512_xor_si512, ROL512)
    for (int i = 0; i < 16; i++) x[i] = _mm512_add_epi32(x[i], s[i]);
    store16(x, ks);
}

/* 32 blocks (counter ctr...ctr+31) into ks: two batches of 16 whose rounds interleave, which keeps
   more of the vector units busy than one batch after the other (about 1.3 times the speed). */
TARGET static void blocks32(const uint32_t in[16], uint32_t ctr, uint8_t ks[2048]) {
    __m512i x[16], y[16];
    __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32((int)ctr), _mm512_loadu_si512((const void *)lanes));
    __m512i c1 = _mm512_add_epi32(c0, _mm512_set1_epi32(16));
    for (int i = 0; i < 16; i++) x[i] = y[i] = _mm512_set1_epi32((int)in[i]);
    x[12] = c0;
    y[12] = c1;
    for (int r = 0; r < 10; r++) {
        ROUND(x, _mm512_add_epi32, _mm512_xor_si512, ROL512)
        ROUND(y, _mm512_add_epi32, _mm512_xor_si512, ROL512)
    }
    for (int i = 0; i < 16; i++) {
        __m512i s = i == 12 ? c0 : _mm512_set1_epi32((int)in[i]);
        x[i] = _mm512_add_epi32(x[i], s);
        y[i] = _mm512_add_epi32(y[i], i == 12 ? c1 : s);
    }
    store16(x, ks);
    store16(y, ks + 1024);
}

/* out[0..<n] = in[0..<n] ^ ks[0..<n] */
TARGET static void xor_into(uint8_t *out, const uint8_t *in, const uint8_t *ks, size_t n) {
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m512i v = _mm512_xor_si512(_mm512_loadu_si512((const void *)(in + i)), _mm512_loadu_si512((const void *)(ks + i)));
        _mm512_storeu_si512((void *)(out + i), v);
    }
    if (i < n) {
        __mmask64 m = (__mmask64)-1 >> (64 - (n - i));
        __m512i v = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, in + i), _mm512_maskz_loadu_epi8(m, ks + i));
        _mm512_mask_storeu_epi8(out + i, m, v);
    }
}

/* Key and 96-bit nonce as little-endian words (as x86 is); block counter 0. */
static void state(uint32_t st[16], const uint8_t key[32], const uint8_t nonce[12]) {
    memcpy(st, sigma, 16);
    memcpy(st + 4, key, 32);
    st[12] = 0;
    memcpy(st + 13, nonce, 12);
}

TARGET void CRelayChaCha20_avx512(const uint8_t key[32], uint64_t counter, const uint8_t *in, size_t len,
                                  uint8_t *out, uint8_t polykey[32]) {
    uint8_t nonce[12] = {0};
    for (int i = 0; i < 8; i++) nonce[4 + i] = (uint8_t)(counter >> (8 * i));
    CRelayChaCha20_avx512_nonce96(key, nonce, in, len, out, polykey);
}

TARGET void CRelayChaCha20_avx512_nonce96(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *in, size_t len,
                                          uint8_t *out, uint8_t polykey[32]) {
    uint32_t st[16];
    state(st, key, nonce);
    uint8_t ks[2048] __attribute__((aligned(64)));
    /* Block 0 is the Poly1305 key; data starts at block 1. */
    size_t done = 0;
    uint32_t ctr = 0;
    int first = 1;
    while (first || done < len) {
        size_t blocks = (len - done + 63) / 64 + (first ? 1 : 0);
        size_t made;
        if (blocks > 16) { blocks32(st, ctr, ks); made = 32; }
        else { blocks16(st, ctr, ks); made = 16; }
        const uint8_t *k = ks;
        size_t avail = made * 64;
        if (first) { memcpy(polykey, ks, 32); k += 64; avail -= 64; first = 0; }
        size_t n = len - done < avail ? len - done : avail;
        xor_into(out + done, in + done, k, n);
        done += n;
        ctr += (uint32_t)made;
    }
    /* The keystream is key material: do not leave it on the stack. */
    memset(ks, 0, sizeof ks);
    __asm__ __volatile__("" : : "r"(ks) : "memory");
}

int CRelayChaCha20_avx512_usable(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
}

#else
/* Other architectures (aarch64, ...): never usable, so aead.c always takes libcrypto's AEAD. */
int CRelayChaCha20_avx512_usable(void) { return 0; }
void CRelayChaCha20_avx512(const uint8_t key[32], uint64_t counter, const uint8_t *in, size_t len,
                           uint8_t *out, uint8_t polykey[32]) {
    (void)key; (void)counter; (void)in; (void)len; (void)out; (void)polykey;
    abort();
}
void CRelayChaCha20_avx512_nonce96(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *in, size_t len,
                                   uint8_t *out, uint8_t polykey[32]) {
    (void)key; (void)nonce; (void)in; (void)len; (void)out; (void)polykey;
    abort();
}
#endif
