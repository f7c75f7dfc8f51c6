#include <string.h>
#include "CRelayCrypto.h"

/* SipHash-2-4 with a 128-bit output (Aumasson and Bernstein, "SipHash: a fast short-input PRF",
   and the reference implementation's 128-bit mode): four 64-bit lanes, two rounds per 8-byte word,
   four after the last one for each half of the output. */

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "siphash.c reads words little-endian with memcpy: little-endian hosts only"
#endif

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

typedef struct { uint64_t v0, v1, v2, v3; } sip_state;

static inline void sip_round(sip_state *s) {
    s->v0 += s->v1; s->v1 = ROTL(s->v1, 13); s->v1 ^= s->v0; s->v0 = ROTL(s->v0, 32);
    s->v2 += s->v3; s->v3 = ROTL(s->v3, 16); s->v3 ^= s->v2;
    s->v0 += s->v3; s->v3 = ROTL(s->v3, 21); s->v3 ^= s->v0;
    s->v2 += s->v1; s->v1 = ROTL(s->v1, 17); s->v1 ^= s->v2; s->v2 = ROTL(s->v2, 32);
}

static inline uint64_t load64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void store64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

static inline void sip_init(sip_state *s, const uint8_t key[16]) {
    uint64_t k0 = load64(key), k1 = load64(key + 8);
    s->v0 = k0 ^ 0x736f6d6570736575ULL;
    s->v1 = k1 ^ 0x646f72616e646f6dULL ^ 0xee;   /* 128-bit output */
    s->v2 = k0 ^ 0x6c7967656e657261ULL;
    s->v3 = k1 ^ 0x7465646279746573ULL;
}

static inline void sip_word(sip_state *s, uint64_t m) {
    s->v3 ^= m; sip_round(s); sip_round(s); s->v0 ^= m;
}

/* `n` is a multiple of 8. */
static inline void sip_words(sip_state *s, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i += 8) sip_word(s, load64(p + i));
}

/* The last `left` (< 8) bytes and the message's total length, then both output halves. */
static inline void sip_final(sip_state *s, const uint8_t *last, size_t left, size_t total, uint8_t out[16]) {
    uint64_t b = (uint64_t)total << 56;
    for (size_t i = 0; i < left; i++) b |= (uint64_t)last[i] << (8 * i);
    sip_word(s, b);
    s->v2 ^= 0xee;
    for (int i = 0; i < 4; i++) sip_round(s);
    store64(out, s->v0 ^ s->v1 ^ s->v2 ^ s->v3);
    s->v1 ^= 0xdd;
    for (int i = 0; i < 4; i++) sip_round(s);
    store64(out + 8, s->v0 ^ s->v1 ^ s->v2 ^ s->v3);
}

void CRelayCrypto_siphash128(const uint8_t key[16], const uint8_t *in, size_t len, uint8_t out[16]) {
    sip_state s;
    sip_init(&s, key);
    size_t whole = len & ~(size_t)7;
    sip_words(&s, in, whole);
    sip_final(&s, in + whole, len - whole, len, out);
}

void CRelayCrypto_relay_tag(const uint8_t key[16], const uint8_t *frame, size_t len, uint8_t out[16]) {
    size_t covered = len;
    if (len >= 2 && (frame[1] == 1 || frame[1] == 2) && covered > 64) covered = 64;
    /* The message is frame[0..<covered] then len as a 64-bit little-endian word: whole words of
       the frame straight from it, the rest of the frame and the length word from a small copy. */
    size_t head = covered & ~(size_t)7, rest = covered - head;
    uint8_t tail[16];
    memcpy(tail, frame + head, rest);
    store64(tail + rest, (uint64_t)len);
    size_t tl = rest + 8, tw = tl & ~(size_t)7;
    sip_state s;
    sip_init(&s, key);
    sip_words(&s, frame, head);
    sip_words(&s, tail, tw);
    sip_final(&s, tail + tw, tl - tw, covered + 8, out);
}
