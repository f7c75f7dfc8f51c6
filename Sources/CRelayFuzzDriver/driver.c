/* SwiftPM names an executable's entry point itself (and links `main` to it), so libFuzzer's own
   main is never used: relay-fuzz's main calls the driver through here. */
#include "CRelayFuzzDriver.h"

#ifdef RELAY_LIBFUZZER
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
int CRelayFuzz_run(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size)) {
    return LLVMFuzzerRunDriver(argc, argv, callback);
}
#else
int CRelayFuzz_run(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size)) {
    (void)argc; (void)argv; (void)callback;
    return -1;
}
#endif
