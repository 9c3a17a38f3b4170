#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::session_actions::do_test(data));
