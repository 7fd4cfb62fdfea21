#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| clerksync::fuzzing::webhook_delivery(data));
