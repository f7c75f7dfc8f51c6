#ifndef CRELAYCRYPTO_H
#define CRELAYCRYPTO_H
#include <stddef.h>
#include <stdint.h>

/// ChaCha20-Poly1305 (RFC 8439) as Noise's ChaChaPoly cipher uses it: a 32-byte key, the nonce is
/// 4 zero bytes then the 64-bit counter little-endian. Into caller buffers (in == out is allowed),
/// with contexts kept per thread: nothing is allocated per call. On CPUs with AVX-512, ChaCha20 is
/// our own (chacha20_avx512.c) and Poly1305 is libcrypto's MAC; elsewhere, or with the environment
/// variable RELAY_AEAD_GENERIC set, the whole AEAD is the system libcrypto's (OpenSSL 3).

/// Seals `len` bytes of `in` into `out` (len + 16 bytes: ciphertext then tag). Returns len + 16,
/// or -1 when libcrypto fails.
long CRelayCrypto_seal(const uint8_t *key, uint64_t counter, const uint8_t *ad, size_t adlen,
                       const uint8_t *in, size_t len, uint8_t *out);

/// Opens `len` bytes of `in` (ciphertext then 16-byte tag) into `out` (len - 16 bytes). Returns
/// len - 16, or -1 when it does not authenticate (then `out` holds nothing to use).
long CRelayCrypto_open(const uint8_t *key, uint64_t counter, const uint8_t *ad, size_t adlen,
                       const uint8_t *in, size_t len, uint8_t *out);

/// "avx512" or "libcrypto": which implementation seal and open use in this process.
const char *CRelayCrypto_implementation(void);

/// libcrypto's ChaCha20-Poly1305 whatever the CPU (the reference the tests compare against).
long CRelayCrypto_seal_libcrypto(const uint8_t *key, uint64_t counter, const uint8_t *ad, size_t adlen,
                                 const uint8_t *in, size_t len, uint8_t *out);
long CRelayCrypto_open_libcrypto(const uint8_t *key, uint64_t counter, const uint8_t *ad, size_t adlen,
                                 const uint8_t *in, size_t len, uint8_t *out);

/// Tests: seal or open with any 96-bit nonce `iv` (RFC 8439's known-answer vectors) through one
/// implementation: 0 = libcrypto's AEAD, 1 = the AVX-512 ChaCha20 with libcrypto's Poly1305
/// (returns -2 when this CPU cannot run it). Otherwise as CRelayCrypto_seal / CRelayCrypto_open.
long CRelayCrypto_seal_nonce96(int impl, const uint8_t *key, const uint8_t *iv, const uint8_t *ad, size_t adlen,
                               const uint8_t *in, size_t len, uint8_t *out);
long CRelayCrypto_open_nonce96(int impl, const uint8_t *key, const uint8_t *iv, const uint8_t *ad, size_t adlen,
                               const uint8_t *in, size_t len, uint8_t *out);

/// SipHash-2-4 with a 128-bit output (the reference implementation's 128-bit mode) of `len` bytes.
void CRelayCrypto_siphash128(const uint8_t key[16], const uint8_t *in, size_t len, uint8_t out[16]);

/// A relay frame's tag (docs/relay-protocol.md, "frame"): SipHash-2-4-128 under `key` (the first 16
/// bytes of the sender's key) over the frame's covered bytes, then its length (`len`, the frame
/// without the tag) as a 64-bit little-endian word. A forward or deliver frame (kind 1 or 2) is
/// covered up to its first 64 bytes (the rest is a datagram sealed end to end by the tunnel
/// session); every other frame is covered whole.
void CRelayCrypto_relay_tag(const uint8_t key[16], const uint8_t *frame, size_t len, uint8_t out[16]);

#endif
