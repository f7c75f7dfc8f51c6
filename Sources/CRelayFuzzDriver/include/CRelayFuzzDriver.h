#ifndef CRELAYFUZZDRIVER_H
#define CRELAYFUZZDRIVER_H
#include <stddef.h>
#include <stdint.h>
/// Runs libFuzzer's driver (LLVMFuzzerRunDriver) with the command line and `callback` as the fuzz
/// target, when built for fuzzing (-DRELAY_LIBFUZZER with -sanitize=fuzzer); returns -1 otherwise.
int CRelayFuzz_run(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
#endif
