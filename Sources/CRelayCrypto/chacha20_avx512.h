#ifndef CRELAY_CHACHA20_AVX512_H
#define CRELAY_CHACHA20_AVX512_H
#include <stddef.h>
#include <stdint.h>
/* x86_64 only: elsewhere CRelayChaCha20_avx512_usable() is 0 and the others abort.
   Encrypts (or decrypts) len bytes of in into out with ChaCha20 under key and the Noise nonce
   (4 zero bytes, the 64-bit counter little-endian), data from block counter 1, and writes block 0's
   first 32 bytes (the Poly1305 key) to polykey. Only call when CRelayChaCha20_avx512_usable(). */
void CRelayChaCha20_avx512(const uint8_t key[32], uint64_t counter, const uint8_t *in, size_t len,
                           uint8_t *out, uint8_t polykey[32]);
/* The same with any 96-bit nonce (RFC 8439's known-answer tests use nonces Noise never does). */
void CRelayChaCha20_avx512_nonce96(const uint8_t key[32], const uint8_t nonce[12], const uint8_t *in, size_t len,
                                   uint8_t *out, uint8_t polykey[32]);
int CRelayChaCha20_avx512_usable(void);
#endif
