#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| clerksync::fuzzing::realtime_message(data));
