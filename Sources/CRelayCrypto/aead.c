#include <string.h>
#include <pthread.h>
#include <openssl/evp.h>
#include "CRelayCrypto.h"

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

long CRelayCrypto_seal(const uint8_t *key, uint64_t counter, const uint8_t *ad, size_t adlen,
                       const uint8_t *in, size_t len, uint8_t *out) {
    EVP_CIPHER_CTX *c = context(1);
    if (!c || len > 0x7fffffff) return -1;
    uint8_t iv[12];
    nonce(counter, iv);
    int n = 0, m = 0;
    if (EVP_EncryptInit_ex2(c, NULL, rekey(1, key), iv, NULL) != 1) { enc_keyed = 0; return -1; }
    if (adlen && EVP_EncryptUpdate(c, NULL, &n, ad, (int)adlen) != 1) return -1;
    if (len && EVP_EncryptUpdate(c, out, &n, in, (int)len) != 1) return -1;
    if (EVP_EncryptFinal_ex(c, out + n, &m) != 1) return -1;
    if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, 16, out + len) != 1) return -1;
    return (long)len + 16;
}

long CRelayCrypto_open(const uint8_t *key, uint64_t counter, const uint8_t *ad, size_t adlen,
                       const uint8_t *in, size_t len, uint8_t *out) {
    EVP_CIPHER_CTX *c = context(0);
    if (!c || len < 16 || len > 0x7fffffff) return -1;
    size_t plen = len - 16;
    uint8_t iv[12], tag[16];
    memcpy(tag, in + plen, 16);
    nonce(counter, iv);
    int n = 0, m = 0;
    if (EVP_DecryptInit_ex2(c, NULL, rekey(0, key), iv, NULL) != 1) { dec_keyed = 0; return -1; }
    if (adlen && EVP_DecryptUpdate(c, NULL, &n, ad, (int)adlen) != 1) return -1;
    if (plen && EVP_DecryptUpdate(c, out, &n, in, (int)plen) != 1) return -1;
    if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, 16, tag) != 1) return -1;
    if (EVP_DecryptFinal_ex(c, out + n, &m) != 1) return -1;
    return (long)plen;
}
