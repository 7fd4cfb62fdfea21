#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| clerksync::fuzzing::search_query(data));
