#include <string.h>
#include <stdlib.h>
#include <pthread.h>
#include <openssl/evp.h>
#include <openssl/crypto.h>
#include <openssl/core_names.h>
#include "CRelayCrypto.h"
#include "chacha20_avx512.h"

static EVP_CIPHER *cipher;
static pthread_once_t once = PTHREAD_ONCE_INIT;
/* One context per thread and direction, bound to the cipher once: each call then only sets key and
   nonce (EVP_*Init_ex2 with a NULL cipher does not reset the context). */
static __thread EVP_CIPHER_CTX *enc_ctx, *dec_ctx;
/* The key each context holds: consecutive packets of one session only set the nonce. */
static __thread uint8_t enc_key[32], dec_key[32];
static __thread int enc_keyed, dec_keyed;

/* The key to pass to EVP_*Init_ex2: NULL when the context already holds it. */
static const uint8_t *rekey(int enc, const uint8_t *key) {
    uint8_t *held = enc ? enc_key : dec_key;
    int *keyed = enc ? &enc_keyed : &dec_keyed;
    if (*keyed && memcmp(held, key, 32) == 0) return NULL;
    memcpy(held, key, 32);
    *keyed = 1;
    return key;
}

static void fetch(void) { cipher = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL); }

static EVP_CIPHER_CTX *context(int enc) {
    pthread_once(&once, fetch);
    if (!cipher) return NULL;
    EVP_CIPHER_CTX **c = enc ? &enc_ctx : &dec_ctx;
    if (!*c) {
        EVP_CIPHER_CTX *n = EVP_CIPHER_CTX_new();
        if (!n) return NULL;
        if (EVP_CipherInit_ex2(n, cipher, NULL, NULL, enc, NULL) != 1) { EVP_CIPHER_CTX_free(n); return NULL; }
        *c = n;
    }
    return *c;
}

static void nonce(uint64_t counter, uint8_t iv[12]) {
    memset(iv, 0, 4);
    for (int i = 0; i < 8; i++) iv[4 + i] = (uint8_t)(counter >> (8 * i));
}

/* The fast path (CPUs with AVX-512): ChaCha20 from chacha20_avx512.c, which gives the Poly1305 key
   and the data in one pass, and libcrypto's Poly1305 MAC. libcrypto's ChaCha20-Poly1305 spends about
   as long on the Poly1305 key block (one block, computed apart and without SIMD) and on its generic
   EVP layer per message as on 1408 bytes of data; a tunnel seals one message per packet. */
static int fast_usable;
static __thread EVP_MAC_CTX *mac_ctx;
static EVP_MAC *mac;
static pthread_once_t fast_once = PTHREAD_ONCE_INIT;
static pthread_once_t mac_once = PTHREAD_ONCE_INIT;
static void fetch_mac(void) { mac = EVP_MAC_fetch(NULL, "POLY1305", NULL); }
static void decide(void) {
    if (!CRelayChaCha20_avx512_usable() || getenv("RELAY_AEAD_GENERIC") != NULL) return;
    pthread_once(&mac_once, fetch_mac);
    fast_usable = mac != NULL;
}
static int fast(void) { pthread_once(&fast_once, decide); return fast_usable; }

static const uint8_t zeros[16];

/* RFC 8439 §2.8: Poly1305 over ad, zero padding to 16, ciphertext, zero padding, and the two
   lengths (64-bit little-endian). */
static int poly_tag(const uint8_t pk[32], const uint8_t *ad, size_t adlen, const uint8_t *ct, size_t len,
                    uint8_t tag[16]) {
    if (!mac_ctx && !(mac_ctx = EVP_MAC_CTX_new(mac))) return 0;
    EVP_MAC_CTX *c = mac_ctx;
    uint8_t lens[16];
    for (int i = 0; i < 8; i++) { lens[i] = (uint8_t)((uint64_t)adlen >> (8 * i)); lens[8 + i] = (uint8_t)((uint64_t)len >> (8 * i)); }
    size_t out = 0;
    if (EVP_MAC_init(c, pk, 32, NULL) != 1) return 0;
    if (adlen && (EVP_MAC_update(c, ad, adlen) != 1 || ((adlen & 15) && EVP_MAC_update(c, zeros, 16 - (adlen & 15)) != 1))) return 0;
    if (len && (EVP_MAC_update(c, ct, len) != 1 || ((len & 15) && EVP_MAC_update(c, zeros, 16 - (len & 15)) != 1))) return 0;
    if (EVP_MAC_update(c, lens, 16) != 1 || EVP_MAC_final(c, tag, &out, 16) != 1 || out != 16) return 0;
    return 1;
}

static long fast_seal(const uint8_t *key, const uint8_t iv[12], const uint8_t *ad, size_t adlen,
                      const uint8_t *in, size_t len, uint8_t *out) {
    uint8_t pk[32];
    CRelayChaCha20_avx512_nonce96(key, iv, in, len, out, pk);
    int ok = poly_tag(pk, ad, adlen, out, len, out + len);
    explicit_bzero(pk, sizeof pk);
    return ok ? (long)len + 16 : -1;
}

static long fast_open(const uint8_t *key, const uint8_t iv[12], const uint8_t *ad, size_t adlen,
                      const uint8_t *in, size_t len, uint8_t *out) {
    size_t plen = len - 16;
    uint8_t pk[32], tag[16];
    int ok;
    if (out + plen <= in || in + len <= out) {
        /* Apart: decrypt and take the key in one pass, then check the tag over the ciphertext. */
        CRelayChaCha20_avx512_nonce96(key, iv, in, plen, out, pk);
        ok = poly_tag(pk, ad, adlen, in, plen, tag) && CRYPTO_memcmp(tag, in + plen, 16) == 0;
    } else {
        /* In place: the ciphertext is needed for the tag before it is overwritten. */
        CRelayChaCha20_avx512_nonce96(key, iv, NULL, 0, NULL, pk);
        ok = poly_tag(pk, ad, adlen, in, plen, tag) && CRYPTO_memcmp(tag, in + plen, 16) == 0;
        if (ok) CRelayChaCha20_avx512_nonce96(key, iv, in, plen, out, pk);
    }
    explicit_bzero(pk, sizeof pk);
    if (!ok) { explicit_bzero(out, plen); return -1; }
    return (long)plen;
}

static long libcrypto_seal(const uint8_t *key, const uint8_t iv[12], const uint8_t *ad, size_t adlen,
                           const uint8_t *in, size_t len, uint8_t *out) {
    EVP_CIPHER_CTX *c = context(1);
    if (!c || len > 0x7fffffff) return -1;
    int n = 0, m = 0;
    if (EVP_EncryptInit_ex2(c, NULL, rekey(1, key), iv, NULL) != 1) { enc_keyed = 0; return -1; }
    if (adlen && EVP_EncryptUpdate(c, NULL, &n, ad, (int)adlen) != 1) return -1;
    if (len && EVP_EncryptUpdate(c, out, &n, in, (int)len) != 1) return -1;
    if (EVP_EncryptFinal_ex(c, out + n, &m) != 1) return -1;
    if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, 16, out + len) != 1) return -1;
    return (long)len + 16;
}

static long libcrypto_open(const uint8_t *key, const uint8_t iv[12], const uint8_t *ad, size_t adlen,
                           const uint8_t *in, size_t len, uint8_t *out) {
    EVP_CIPHER_CTX *c = context(0);
    if (!c || len < 16 || len > 0x7fffffff) return -1;
    size_t plen = len - 16;
    uint8_t tag[16];
    memcpy(tag, in + plen, 16);
    int n = 0, m = 0;
    if (EVP_DecryptInit_ex2(c, NULL, rekey(0, key), iv, NULL) != 1) { dec_keyed = 0; return -1; }
    if (adlen && EVP_DecryptUpdate(c, NULL, &n, ad, (int)adlen) != 1) return -1;
    if (plen && EVP_DecryptUpdate(c, out, &n, in, (int)plen) != 1) return -1;
    if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, 16, tag) != 1) return -1;
    if (EVP_DecryptFinal_ex(c, out + n, &m) != 1) {
        /* libcrypto decrypts before it checks the tag: wipe what it wrote. */
        explicit_bzero(out, plen);
        return -1;
    }
    return (long)plen;
}

long CRelayCrypto_seal(const uint8_t *key, uint64_t counter, const uint8_t *ad, size_t adlen,
                       const uint8_t *in, size_t len, uint8_t *out) {
    if (len > 0x7fffffff) return -1;
    uint8_t iv[12];
    nonce(counter, iv);
    if (fast()) return fast_seal(key, iv, ad, adlen, in, len, out);
    return libcrypto_seal(key, iv, ad, adlen, in, len, out);
}

long CRelayCrypto_open(const uint8_t *key, uint64_t counter, const uint8_t *ad, size_t adlen,
                       const uint8_t *in, size_t len, uint8_t *out) {
    if (len < 16 || len > 0x7fffffff) return -1;
    uint8_t iv[12];
    nonce(counter, iv);
    if (fast()) return fast_open(key, iv, ad, adlen, in, len, out);
    return libcrypto_open(key, iv, ad, adlen, in, len, out);
}

const char *CRelayCrypto_implementation(void) { return fast() ? "avx512" : "libcrypto"; }

long CRelayCrypto_seal_libcrypto(const uint8_t *key, uint64_t counter, const uint8_t *ad, size_t adlen,
                                 const uint8_t *in, size_t len, uint8_t *out) {
    uint8_t iv[12];
    nonce(counter, iv);
    return libcrypto_seal(key, iv, ad, adlen, in, len, out);
}

long CRelayCrypto_open_libcrypto(const uint8_t *key, uint64_t counter, const uint8_t *ad, size_t adlen,
                                 const uint8_t *in, size_t len, uint8_t *out) {
    uint8_t iv[12];
    nonce(counter, iv);
    return libcrypto_open(key, iv, ad, adlen, in, len, out);
}

/* The AVX-512 ChaCha20 needs libcrypto's Poly1305 MAC too; usable whether or not RELAY_AEAD_GENERIC
   switched the default. */
static int avx512_here(void) {
    if (!CRelayChaCha20_avx512_usable()) return 0;
    pthread_once(&mac_once, fetch_mac);
    return mac != NULL;
}

long CRelayCrypto_seal_nonce96(int impl, const uint8_t *key, const uint8_t *iv, const uint8_t *ad, size_t adlen,
                               const uint8_t *in, size_t len, uint8_t *out) {
    if (impl == 1) return avx512_here() ? fast_seal(key, iv, ad, adlen, in, len, out) : -2;
    return libcrypto_seal(key, iv, ad, adlen, in, len, out);
}

long CRelayCrypto_open_nonce96(int impl, const uint8_t *key, const uint8_t *iv, const uint8_t *ad, size_t adlen,
                               const uint8_t *in, size_t len, uint8_t *out) {
    if (len < 16) return -1;
    if (impl == 1) return avx512_here() ? fast_open(key, iv, ad, adlen, in, len, out) : -2;
    return libcrypto_open(key, iv, ad, adlen, in, len, out);
}
