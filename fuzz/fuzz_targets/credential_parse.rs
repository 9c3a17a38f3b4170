#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_fuzz::credential_parse::do_test(data));
